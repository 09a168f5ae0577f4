"""Shard files: bit-exact round trips, atomic writes, corruption checks, settings diffs."""

from __future__ import annotations

import pytest
import torch

from vdistill.data.shards import atomic_write, check_shard, read_shard, settings_diff, write_shard
from vdistill.errors import UserError

SETTINGS = {"key_indices": [0, 2], "latent_shape": [3, 2, 4, 4], "dtype": "bfloat16", "seed": 10}


def _tensors(n: int = 3, start: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(n, 2, 3, 2, 4, 4, generator=g).bfloat16()
    latents.view(-1)[:4] = torch.tensor([float("nan"), float("inf"), -0.0, 1e-40]).bfloat16()  # odd bit patterns
    index = torch.arange(start, start + n)
    return {"latents": latents, "text.pooled": torch.randn(n, 5, generator=g).bfloat16(),
            "text.ids": torch.randint(0, 100, (n, 7), generator=g), "text.mask": torch.rand(n, 7, generator=g) > 0.5,
            "seeds": index + 10, "index": index}


def _entry(info: dict, n: int = 3, start: int = 0) -> dict:
    return {"index": 0, "file": "s.safetensors", "start": start, "count": n, **info}


def test_round_trip_is_bit_exact(tmp_path):
    tensors = _tensors()
    write_shard(tmp_path / "s.safetensors", tensors, {"prompts": '["a", "b", "c"]'})
    back, meta = read_shard(tmp_path / "s.safetensors")
    assert meta["prompts"] == '["a", "b", "c"]'
    assert set(back) == set(tensors)
    for k, v in tensors.items():
        assert back[k].dtype == v.dtype and back[k].shape == v.shape
        if v.dtype == torch.bfloat16:
            assert torch.equal(back[k].view(torch.int16), v.view(torch.int16)), k
        else:
            assert torch.equal(back[k], v), k
    assert list(tmp_path.iterdir()) == [tmp_path / "s.safetensors"]  # no temp file left


def test_failed_write_keeps_the_old_file_and_no_temp(tmp_path):
    path = tmp_path / "f.json"
    path.write_text("old")

    def crash(tmp):
        tmp.write_text("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, crash)
    assert path.read_text() == "old"
    assert list(tmp_path.iterdir()) == [path]


def test_check_shard_accepts_a_good_shard_and_names_a_corrupt_one(tmp_path):
    path = tmp_path / "s.safetensors"
    entry = _entry(write_shard(path, _tensors(), {}))
    check_shard(path, entry, SETTINGS, sha256=True)

    with pytest.raises(UserError, match="latents have shape"):
        check_shard(path, {**entry, "count": 2}, SETTINGS)
    with pytest.raises(UserError, match="holds samples"):
        check_shard(path, {**entry, "start": 5}, SETTINGS)
    with pytest.raises(UserError, match="expected float32"):
        check_shard(path, entry, {**SETTINGS, "dtype": "float32"})

    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # same size, one flipped bit in the payload
    path.write_bytes(bytes(data))
    check_shard(path, entry, SETTINGS)  # the quick check reads the header only
    with pytest.raises(UserError, match=r"s\.safetensors.*sha256.*delete it"):
        check_shard(path, entry, SETTINGS, sha256=True)

    path.write_bytes(bytes(data[:-10]))
    with pytest.raises(UserError, match=r"s\.safetensors.*bytes.*delete it"):
        check_shard(path, entry, SETTINGS)
    with pytest.raises(UserError, match=r"unreadable safetensors.*delete it"):
        check_shard(path, {**entry, "bytes": len(data) - 10}, SETTINGS)
    path.unlink()
    with pytest.raises(UserError, match="missing"):
        check_shard(path, entry, SETTINGS)


def test_settings_diff_names_nested_keys():
    old = {"schedule": {"kind": "flow", "shift": 3.0}, "steps": 6}
    new = {"schedule": {"kind": "ddpm", "shift": 3.0}, "steps": 6, "cfg": 1.0}
    assert settings_diff(old, new) == ["cfg: \"<absent>\" (folder) != 1.0 (now)",
                                       "schedule.kind: \"flow\" (folder) != \"ddpm\" (now)"]
    assert settings_diff(old, old) == []
