"""``vdistill preprocess``: the cache read back equals a fresh encode of VideoClips' clips, skipped clips recorded,
resuming after kill -9 with identical files, ranks, refusals in one line, corrupt files found."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from cli_helpers import run_cli
from preprocess_helpers import ROWS

from vdistill.backbones.base import text_to
from vdistill.backbones.io import load_backbone
from vdistill.commands.preprocess import run
from vdistill.data.decode import ClipSpec
from vdistill.data.latent_cache import load_manifest, pad_tail, trim_tail
from vdistill.data.latent_clips import LatentClipDataset
from vdistill.data.shards import ShardError
from vdistill.data.videos import VideoClipDataset
from vdistill.errors import UserError

TOY = ["--shard-size", "2", "--batch-size", "2", "--workers", "0", "--quiet"]
#: the readable rows of :data:`ROWS` in file order (the corrupt, too short and caption-less ones are skipped)
GOOD = [r for r in ROWS if r[2] >= 20 and r[1]]


def files(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(root.iterdir())}


def toy_cache(videos: Path, teacher: Path, out: Path, *extra: str) -> dict:
    return run(["--model", str(teacher), "--videos", str(videos / "captions.csv"), "--out", str(out), *TOY, *extra])


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_the_cache_read_back_equals_a_fresh_encode(wan_pipeline_dir, videos, tmp_path, dtype):
    """Tiny Wan2.1 (its real VAE and UMT5): every stored clip is the teacher's encoding of the clip VideoClips gives
    in its first epoch, and the text (its zero tail cut on disk) the teacher's encoding of the caption."""
    out = tmp_path / "cache"
    run(["--model", str(wan_pipeline_dir), "--videos", str(videos / "captions.csv"), "--out", str(out),
         "--frames", "5", "--height", "32", "--width", "32", "--fps", "12", "--dtype", dtype, "--shard-size", "3",
         "--workers", "1", "--quiet"])
    teacher = load_backbone(wan_pipeline_dir)
    clips = VideoClipDataset(videos / "captions.csv", None, ClipSpec(5, 32, 32, 12.0), seed=0)
    cache = LatentClipDataset(out, teacher=teacher)
    store = getattr(torch, dtype)
    assert len(cache) == len(GOOD) == 6
    with torch.no_grad():
        for item in cache:
            video, caption = clips[(0, item["index"])]  # VideoClips' epoch-0 clip of that row
            assert caption == item["prompt"]
            want = teacher.encode_video(video[None]).to(store)[0]
            assert item["latents"].dtype == store and torch.equal(item["latents"], want)
            text = text_to(teacher.encode_text([caption]), "cpu", store)
            assert torch.equal(item["text"]["states"], text["states"][0])
        uncond = text_to(teacher.encode_text([""]), "cpu", store)
    assert torch.equal(cache.uncond["states"], uncond["states"])
    assert [it["prompt"] for it in cache] == [caption for _, caption, _ in GOOD]
    stored = cache._shard(0)[0].get_slice("text.states").get_shape()
    assert stored[1] < 512 and stored[2] == 16  # UMT5's 512 positions, zero past the caption: cut on disk


def test_skipped_clips_are_recorded_with_their_reasons(toy_teachers, videos, tmp_path, capsys):
    code, out, err = run_cli(["preprocess", "--model", str(toy_teachers["ddpm"]), "--videos",
                              str(videos / "captions.csv"), "--out", str(tmp_path / "cache"), "--shard-size", "2",
                              "--workers", "0"], capsys)
    assert code == 0, err
    manifest = load_manifest(tmp_path / "cache")
    assert manifest["complete"] and manifest["num_clips"] == 6 and manifest["num_skipped"] == 3
    assert manifest["skipped"] == [[2, "bad.mp4", "unreadable"], [4, "short.mp4", "too short"],
                                   [5, "v3.mp4", "empty caption"]]
    assert manifest["dropped"] == [[5, "v3.mp4", "empty caption"]]
    s = manifest["settings"]
    assert s["video_size"] == [4, 8, 8] and s["fps"] == 4.0 and s["dtype"] == "bfloat16"
    assert s["teacher"]["class_path"] == "vdistill.backbones.toy.ToyBackbone" and s["latents"] == "posterior mean"
    assert s["usable_rows"] == 8 and s["num_rows"] == 9 and len(manifest["shards"]) == 4
    line = out.strip().splitlines()[-1]
    assert line.startswith("encoded 6 clips in") and "6 clips in 4/4 shards, 3 skipped: bad.mp4 (unreadable)" in line


KILLER = """
import os, signal, sys
import vdistill.preprocess.writer as writer

calls = []


def write_then_die(*args, **kwargs):
    info = original(*args, **kwargs)
    calls.append(args[0])
    if len(calls) == 3:  # uncond.safetensors, shard 0 (listed), shard 1 (written, never listed)
        os.kill(os.getpid(), signal.SIGKILL)
    return info


original, writer.write_shard = writer.write_shard, write_then_die
from vdistill.commands.preprocess import run

run(sys.argv[1:])
"""


def test_a_killed_run_resumes_to_the_same_files(toy_teachers, videos, tmp_path, capsys):
    """SIGKILL right after a shard file is renamed into place but before the manifest lists it; the same command
    again skips the listed shard, rewrites the unlisted one and ends with the files of an uninterrupted run."""
    args = ["--model", str(toy_teachers["ddpm"]), "--videos", str(videos / "captions.csv"), "--shard-size", "2",
            "--batch-size", "2", "--workers", "0"]
    (tmp_path / "killer.py").write_text(KILLER)
    proc = subprocess.run([sys.executable, str(tmp_path / "killer.py"), *args, "--out", str(tmp_path / "killed")],
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    part = json.loads((tmp_path / "killed" / "manifest-r0.json").read_text())
    assert [e["index"] for e in part["shards"]] == [0] and (tmp_path / "killed" / "shard-00001.safetensors").is_file()

    run([*args, "--out", str(tmp_path / "killed")])
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("encoded 4 clips in")  # shards 1 (rewritten), 2 and 3: 1 + 1 + 2 readable clips
    run([*args, "--out", str(tmp_path / "straight")])
    assert files(tmp_path / "killed") == files(tmp_path / "straight")
    assert load_manifest(tmp_path / "killed")["complete"]


def test_ranks_split_the_shards_and_write_the_same_files(toy_teachers, videos, tmp_path):
    toy_cache(videos, toy_teachers["ddpm"], tmp_path / "one")
    for rank in (1, 0):  # rank 1 first: a cache is read only once every rank is done
        toy_cache(videos, toy_teachers["ddpm"], tmp_path / "two", "--rank", str(rank), "--world-size", "2")
        if rank == 1:
            part = json.loads((tmp_path / "two" / "manifest-r1.json").read_text())
            assert [e["index"] for e in part["shards"]] == [1, 3] and part["uncond"] is None
            with pytest.raises(UserError, match="unfinished"):
                LatentClipDataset(tmp_path / "two")
    shared = [name for name in files(tmp_path / "one") if not name.startswith("manifest-r")]
    assert [files(tmp_path / "two")[name] for name in shared] == [files(tmp_path / "one")[name] for name in shared]


def test_another_teacher_or_setting_is_refused_in_one_line(toy_teachers, videos, tmp_path, capsys):
    toy_cache(videos, toy_teachers["ddpm"], tmp_path / "cache")
    before = files(tmp_path / "cache")
    base = ["preprocess", "--videos", str(videos / "captions.csv"), "--out", str(tmp_path / "cache"), *TOY]
    for extra, what in ((["--model", str(toy_teachers["flow"])], "schedule.kind: \"ddpm\" (folder) != \"flow\" (now)"),
                        (["--model", str(toy_teachers["ddpm"]), "--fps", "6"], "fps: 4.0 (folder) != 6.0 (now)"),
                        (["--model", str(toy_teachers["ddpm"]), "--dtype", "float32"], "dtype: \"bfloat16\"")):
        code, _, err = run_cli([*base, *extra], capsys)
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        assert "holds latents made by another teacher or with other settings" in err and what in err, err
    assert files(tmp_path / "cache") == before


def test_arguments_are_checked_before_the_teacher_loads(videos, tmp_path, capsys):
    base = ["preprocess", "--model", str(tmp_path / "no_such_teacher"), "--out", str(tmp_path / "cache")]
    for extra, what in (([], "vdistill preprocess needs --videos"),
                        (["--videos", str(tmp_path / "nope.csv")], "does not exist"),
                        (["--videos", str(videos / "captions.csv"), "--fps", "8", "--stride", "2"], "give one of"),
                        (["--videos", str(videos / "captions.csv"), "--batch-size", "0"], "--batch-size must be"),
                        (["--videos", str(videos / "captions.csv"), "--rank", "2"], "outside world size")):
        code, _, err = run_cli([*base, *extra], capsys)
        assert code == 2 and len(err.strip().splitlines()) == 1 and what in err, err
    assert not (tmp_path / "cache").exists()


def test_a_corrupt_shard_or_manifest_is_found(toy_teachers, videos, tmp_path):
    toy_cache(videos, toy_teachers["ddpm"], tmp_path / "cache")
    shard = tmp_path / "cache" / "shard-00001.safetensors"
    data = bytearray(shard.read_bytes())
    data[-3] ^= 0x40  # a flipped bit in the tensor bytes: same size, same header
    shard.write_bytes(bytes(data))
    cache = LatentClipDataset(tmp_path / "cache")
    cache[0]  # shard 0 is fine
    with pytest.raises(ShardError, match=r"shard-00001.safetensors' is corrupt \(sha256 differs"):
        cache[2]
    manifest = json.loads((tmp_path / "cache" / "manifest.json").read_text())
    manifest["shards"][0]["file"] = "../elsewhere.safetensors"
    for p in (tmp_path / "cache").glob("manifest*.json"):
        p.write_text(json.dumps(manifest))
    with pytest.raises(UserError, match=r"shards\[0\]\.file is '\.\./elsewhere\.safetensors', expected "
                                        r"'shard-00000.safetensors'"):
        LatentClipDataset(tmp_path / "cache")


def test_trimming_the_text_is_lossless():
    g = torch.Generator().manual_seed(0)
    states = torch.randn(3, 10, 4, generator=g)
    states[0, 4:], states[1, 6:], states[2, 2:] = 0, 0, 0  # Wan: zeros past each prompt's length
    mask = (states.abs().sum(-1) > 0).long()
    for x in (states, mask, torch.randn(3, 5, generator=g), torch.zeros(2, 7)):
        cut = trim_tail(x)
        assert torch.equal(pad_tail(cut, x.shape[1]), x)
    assert trim_tail(states).shape == (3, 6, 4) and trim_tail(mask).shape == (3, 6) and trim_tail(
        torch.zeros(2, 7)).shape == (2, 1)
