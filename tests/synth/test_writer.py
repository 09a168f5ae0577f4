"""Writing SynVid: content equals the teacher's own trajectories, resuming after a crash, rank splits, refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from synth_helpers import KEYS, PROMPTS, one_thread

import vdistill.synth.writer as writer
from vdistill.backbones.base import text_to
from vdistill.diffusion.schedules import timesteps_at
from vdistill.errors import UserError
from vdistill.sampling.sampler import initial_noise, sample_latents
from vdistill.synth import load_manifest, read_shard, synthesize, verify

RUN = dict(key_indices=KEYS, shard_size=2, batch_size=2, seed=7, progress=False)


def _files(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(root.iterdir())}


@pytest.fixture(scope="module")
def reference(teacher, tmp_path_factory) -> Path:
    """An uninterrupted single-process run: 5 prompts in 3 shards."""
    root = tmp_path_factory.mktemp("reference")
    with one_thread():
        synthesize(teacher, PROMPTS, root, **RUN)
    return root


def test_stored_key_points_are_the_teachers_trajectories(teacher, reference, capsys):
    manifest = verify(reference)
    s = manifest["settings"]
    assert manifest["complete"] and manifest["num_samples"] == 5 and len(manifest["shards"]) == 3
    assert s["steps"] == 6 and s["cfg"] == 3.0 and s["key_indices"] == list(KEYS)
    assert s["schedule"] == {"kind": "flow", "prediction_type": "flow", "shift": 3.0}
    grid = teacher.schedule.sampling_timesteps(6)
    assert s["key_timesteps"] == timesteps_at(grid, list(KEYS)).tolist()
    assert s["teacher"]["class_path"] == "vdistill.backbones.toy.ToyBackbone"
    assert manifest["bytes_per_sample"] > len(KEYS) * 3 * 4 * 8 * 8 * 2  # bf16 key latents + text + header

    uncond = teacher.encode_text([""])
    for e in manifest["shards"]:
        tensors, meta = read_shard(reference / e["file"])
        lo, hi = e["start"], e["start"] + e["count"]
        assert json.loads(meta["prompts"]) == PROMPTS[lo:hi]
        assert tensors["index"].tolist() == list(range(lo, hi))
        assert tensors["seeds"].tolist() == list(range(7 + lo, 7 + hi))
        with torch.no_grad():
            text = teacher.encode_text(PROMPTS[lo:hi])
            res = sample_latents(teacher, initial_noise((3, 4, 8, 8), range(7 + lo, 7 + hi)), text, steps=6,
                                 uncond=uncond, cfg=3.0, capture=KEYS)
        want = torch.stack([res.trajectory[i] for i in KEYS], 1).bfloat16()
        assert tensors["latents"].dtype == torch.bfloat16 and tensors["latents"].shape == (hi - lo, 4, 3, 4, 8, 8)
        assert torch.equal(tensors["latents"], want)
        assert torch.equal(tensors["text.pooled"], text_to(text, "cpu", torch.bfloat16)["pooled"])
    assert not torch.equal(want[:, 0], want[:, -1])  # the trajectory moves

    synthesize(teacher, PROMPTS, reference, **{**RUN, "progress": True})  # all done: nothing rewritten
    assert "MB per sample" in capsys.readouterr().out


def test_interrupted_run_resumes_to_the_same_dataset(teacher, reference, tmp_path, monkeypatch):
    real, calls = writer.write_shard, []

    def crash_after_one(path, tensors, metadata):
        if calls:
            raise RuntimeError("simulated crash")
        calls.append(path)
        return real(path, tensors, metadata)

    monkeypatch.setattr(writer, "write_shard", crash_after_one)
    with pytest.raises(RuntimeError, match="simulated crash"):
        synthesize(teacher, PROMPTS, tmp_path, **RUN)
    monkeypatch.setattr(writer, "write_shard", real)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest-r0.json", "shard-00000.safetensors"]
    assert not load_manifest(tmp_path)["complete"]
    # a half-written temp file of a killed process, and a shard written but never listed (killed in between)
    (tmp_path / "shard-00001.safetensors.1a2b3c4d.tmp").write_bytes(b"half a shard")
    (tmp_path / "shard-00002.safetensors").write_bytes(b"unlisted garbage")

    synthesize(teacher, PROMPTS, tmp_path, **RUN)
    assert _files(tmp_path) == _files(reference)


def test_two_ranks_write_the_same_shards_as_one(teacher, reference, tmp_path):
    for rank in (0, 1):
        part = synthesize(teacher, PROMPTS, tmp_path, **RUN, rank=rank, world_size=2)
    assert part["complete"]
    ref, got = _files(reference), _files(tmp_path)
    assert set(got) == set(ref) | {"manifest-r1.json"}
    for name in ref:
        if name.startswith("shard-") or name == "manifest.json":
            assert got[name] == ref[name], name
    ranks = {r: json.loads(got[f"manifest-r{r}.json"]) for r in (0, 1)}
    assert [e["index"] for e in ranks[0]["shards"]] == [0, 2] and [e["index"] for e in ranks[1]["shards"]] == [1]


def test_refuses_a_folder_made_by_another_teacher_or_settings(teacher, ddpm_teacher, reference):
    before = _files(reference)
    with pytest.raises(UserError, match=r"another teacher.*schedule\.kind: \"flow\" \(folder\) != \"ddpm\""):
        synthesize(ddpm_teacher, PROMPTS, reference, **RUN)
    with pytest.raises(UserError, match=r"key_indices: \[0, 2, 4, 6\] \(folder\) != \[0, 3, 6\]"):
        synthesize(teacher, PROMPTS, reference, **{**RUN, "key_indices": (0, 3, 6)})
    with pytest.raises(UserError, match="prompts_sha256"):
        synthesize(teacher, PROMPTS[::-1], reference, **RUN)
    with pytest.raises(UserError, match="cfg: 3.0"):
        synthesize(teacher, PROMPTS, reference, **{**RUN, "cfg": 1.0})
    assert _files(reference) == before


def test_refuses_a_corrupt_shard_and_regenerates_a_deleted_one(teacher, reference, tmp_path):
    for p in reference.iterdir():
        (tmp_path / p.name).write_bytes(p.read_bytes())
    shard = tmp_path / "shard-00001.safetensors"
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(UserError, match=r"shard-00001\.safetensors.*corrupt.*delete it"):
        synthesize(teacher, PROMPTS, tmp_path, **RUN)
    shard.unlink()
    synthesize(teacher, PROMPTS, tmp_path, **RUN)
    assert _files(tmp_path) == _files(reference)


def test_rejects_bad_arguments(teacher, tmp_path):
    with pytest.raises(UserError, match="outside the 6-step grid"):
        synthesize(teacher, PROMPTS, tmp_path, **{**RUN, "key_indices": (0, 10)})
    with pytest.raises(UserError, match="strictly increasing"):
        synthesize(teacher, PROMPTS, tmp_path, **{**RUN, "key_indices": (4, 2)})
    with pytest.raises(UserError, match="rank 2"):
        synthesize(teacher, PROMPTS, tmp_path, **RUN, rank=2, world_size=2)
    assert list(tmp_path.iterdir()) == []
