"""Reading SynVid lazily: items, laziness, teacher checks, batching."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from synth_helpers import KEYS, PROMPTS, one_thread

import vdistill.data.shards as shards
from vdistill.data.trajectories import TrajectoryData, TrajectoryDataset
from vdistill.errors import UserError
from vdistill.synth import read_shard, synthesize


@pytest.fixture(scope="module")
def root(teacher, tmp_path_factory) -> Path:
    """5 prompts, one per shard."""
    root = tmp_path_factory.mktemp("synvid")
    with one_thread():
        synthesize(teacher, PROMPTS, root, key_indices=KEYS, shard_size=1, batch_size=1, seed=3, progress=False)
    return root


def test_items_hold_the_stored_key_points(root, teacher):
    ds = TrajectoryDataset(root, teacher=teacher)
    assert len(ds) == 5
    grid = teacher.schedule.sampling_timesteps(6)
    for i in (0, 3, -1):
        item = ds[i]
        j = i % 5
        stored, _ = read_shard(root / f"shard-{j:05d}.safetensors")
        assert item["latents"].shape == (len(KEYS), 3, 4, 8, 8) and item["latents"].dtype == torch.bfloat16
        assert torch.equal(item["latents"], stored["latents"][0])
        assert torch.equal(item["text"]["pooled"], stored["text.pooled"][0])
        assert torch.equal(item["timesteps"], grid[list(KEYS)])
        assert item["prompt"] == PROMPTS[j] and item["seed"] == 3 + j and item["index"] == j
    f32 = TrajectoryDataset(root, dtype=torch.float32)[1]
    assert f32["latents"].dtype == torch.float32 and torch.equal(f32["latents"], ds[1]["latents"].float())
    with pytest.raises(IndexError):
        ds[5]


def test_reads_only_the_requested_shard(root, monkeypatch):
    opened = []
    real = shards.safe_open

    def counting(path, *args, **kwargs):
        opened.append(Path(path).name)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(shards, "safe_open", counting)
    ds = TrajectoryDataset(root, max_open=2)
    assert opened == []
    ds[3]
    assert set(opened) == {"shard-00003.safetensors"}
    n = len(opened)
    ds[3]
    assert len(opened) == n  # kept open
    ds[0], ds[1], ds[3]  # shard 3 was closed (max_open=2) and is opened again
    assert opened[-1] == "shard-00003.safetensors"
    assert set(opened) == {"shard-00000.safetensors", "shard-00001.safetensors", "shard-00003.safetensors"}


def test_refuses_another_teacher_and_unfinished_data(root, ddpm_teacher, teacher, tmp_path):
    with pytest.raises(UserError, match=r"does not match.*schedule\.kind: \"flow\" \(folder\) != \"ddpm\" \(this"):
        TrajectoryDataset(root, teacher=ddpm_teacher)
    synthesize(teacher, PROMPTS, tmp_path, key_indices=KEYS, shard_size=2, batch_size=2, progress=False,
               rank=0, world_size=2)
    with pytest.raises(UserError, match=r"unfinished \(2 of 3 shards\)"):
        TrajectoryDataset(tmp_path)
    assert len(TrajectoryDataset(tmp_path, allow_partial=True)) == 3
    with pytest.raises(UserError, match="no trajectory manifest"):
        TrajectoryDataset(tmp_path / "nothing")


def test_datamodule_batches(root):
    dm = TrajectoryData(str(root), batch_size=2, shuffle=False, dtype="float32")
    dm.setup("fit")
    batches = list(dm.train_dataloader())
    assert len(batches) == 2  # drop_last
    b = batches[0]
    assert b["latents"].shape == (2, len(KEYS), 3, 4, 8, 8) and b["latents"].dtype == torch.float32
    assert b["text"]["pooled"].shape == (2, 16) and b["timesteps"].shape == (2, len(KEYS))
    assert b["prompt"] == PROMPTS[:2] and b["seed"].tolist() == [3, 4] and b["index"].tolist() == [0, 1]


def test_key_subset_equals_a_dataset_synthesized_with_those_keys(root, teacher, tmp_path):
    sub = TrajectoryDataset(root, key_indices=[0, 6])
    with one_thread():
        synthesize(teacher, PROMPTS, tmp_path, key_indices=(0, 6), shard_size=1, batch_size=1, seed=3,
                   progress=False)
    direct = TrajectoryDataset(tmp_path)
    assert torch.equal(sub.timesteps, direct.timesteps) and len(sub) == len(direct)
    for i in (0, 4):
        assert torch.equal(sub[i]["latents"], direct[i]["latents"])  # the same 6-step trajectory, fewer points
        assert torch.equal(sub[i]["timesteps"], direct[i]["timesteps"])
    dm = TrajectoryData(str(root), batch_size=2, shuffle=False, key_indices=[0, 2, 6])
    dm.setup("fit")
    b = next(iter(dm.train_dataloader()))
    assert b["latents"].shape[1] == 3 and torch.equal(b["latents"][0], TrajectoryDataset(root)[0]["latents"][[0, 1, 3]])


@pytest.mark.parametrize("keys, message", [([0, 5], r"\[5\] not stored .* choose from \[0, 2, 4, 6\]"),
                                           ([6, 0], "increasing order"), ([2], "at least two")])
def test_key_subset_errors(root, keys, message):
    with pytest.raises(UserError, match=message):
        TrajectoryDataset(root, key_indices=keys)
