"""``vdistill synth`` end to end on a tiny exported teacher: writes, resumes without rewriting, reads back."""

from __future__ import annotations

import torch

from vdistill.backbones.io import save_backbone
from vdistill.backbones.toy import ToyBackbone
from vdistill.cli import main
from vdistill.data.trajectories import TrajectoryDataset


def test_synth_command_writes_and_resumes(tmp_path, capsys):
    torch.manual_seed(0)
    save_backbone(ToyBackbone(base_channels=8, channel_mult=(1, 2), emb_dim=16, text_dim=16, num_frames=4, size=8,
                              steps=4), tmp_path / "teacher")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle moving left\na blue square moving up\na green triangle moving down\n")
    args = ["synth", "--model", str(tmp_path / "teacher"), "--prompts", str(prompts), "--out", str(tmp_path / "d"),
            "--key-indices", "0,2,4", "--shard-size", "2", "--dtype", "float32"]
    main(args)
    shards = sorted((tmp_path / "d").glob("shard-*.safetensors"))
    assert len(shards) == 2
    stamps = [s.stat().st_mtime_ns for s in shards]
    main(args)  # the same command again: everything is there, nothing is rewritten
    assert [s.stat().st_mtime_ns for s in shards] == stamps
    ds = TrajectoryDataset(tmp_path / "d")
    assert len(ds) == 3 and ds[2]["latents"].shape == (3, 3, 4, 8, 8)
    assert ds[1]["prompt"] == "a blue square moving up"


def test_top_level_help_lists_our_commands(capsys):
    main(["--help"])
    out = capsys.readouterr().out
    assert all(word in out for word in ("fit", "sample", "synth", "demo", "list"))
