"""The fragments of the top-level ``callbacks/`` folder compose with a recipe through the real CLI (``callbacks+:``
appends inside config files), and the callbacks are registered."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vdistill import registry
from vdistill.backbones.io import load_backbone
from vdistill.cli import main

ROOT = Path(__file__).resolve().parents[2]
FRAGMENTS = sorted((ROOT / "callbacks").glob("*.yaml"))
CALLBACKS = {"EMA", "ExportBackbone", "PeriodicCheckpoints", "PeriodicEvaluation", "ThroughputMemory", "VideoSamples"}


def test_registered():
    assert CALLBACKS <= {name for name, _ in registry.components()["callbacks"]}
    assert [f.name for f in FRAGMENTS] == ["adapter_checkpoints.yaml", "ema.yaml", "lr_monitor.yaml",
                                           "throughput.yaml", "toybench_eval.yaml", "video_samples.yaml"]


def test_every_fragment_appends(capsys):
    configs = [arg for f in FRAGMENTS for arg in ("--config", str(f))]
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(ROOT / "experiments/toy/accvideo/accvideo.yaml"), *configs, "--print_config"])
    printed = capsys.readouterr().out
    order = ["ModelCheckpoint", "ExportBackbone", "PeriodicCheckpoints", "EMA", "LearningRateMonitor",
             "ThroughputMemory", "PeriodicEvaluation", "VideoSamples"]  # the recipe's two, then one per fragment
    found = [line.split(".")[-1].strip() for line in printed.splitlines() if "- class_path:" in line
             and ".callbacks." in line]
    assert found == order


def test_accvideo_with_ema_and_video_samples(toy, tmp_path, monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import IMAGES, EventAccumulator

    monkeypatch.chdir(tmp_path)
    main(["fit", "--config", str(ROOT / "experiments/toy/accvideo/accvideo.yaml"),
          "--config", str(ROOT / "callbacks/ema.yaml"), "--config", str(ROOT / "callbacks/video_samples.yaml"),
          f"--model.init_args.teacher={toy / 'teacher'}", f"--data.init_args.root={toy / 'data'}",
          "--data.init_args.batch_size=2", "--trainer.max_steps=2", "--trainer.log_every_n_steps=1",
          "--trainer.enable_progress_bar=false"])
    run = tmp_path / "runs/toy/accvideo/m2_traj_adv"

    ckpt = torch.load(run / "checkpoints/last.ckpt", map_location="cpu", weights_only=True)
    ema = next(v for k, v in ckpt["callbacks"].items() if k.startswith("EMA"))
    assert ema["num_updates"] == 2  # the EMA ran at both steps
    exported = dict(load_backbone(run / "export").named_parameters())
    for name, avg in ema["averaged"].items():  # and the export holds its weights
        torch.testing.assert_close(exported[name], avg, rtol=0, atol=0)

    log_dir = run / "lightning_logs" / "version_0"
    assert (log_dir / "samples/step_000002/grid.gif").is_file()  # VideoSamples ran at the end
    acc = EventAccumulator(str(log_dir), size_guidance={IMAGES: 0})
    acc.Reload()
    assert [e.step for e in acc.Images("samples/grid")] == [2]
    assert "loss/trajectory" in acc.Tags()["scalars"]
