"""Tiny random teachers and prompts for the synthetic-dataset tests (4 frames of 8x8, 6 steps).

A module of its own (not conftest): test modules import these by name, and several test folders have a conftest."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from vdistill.backbones.toy import ToyBackbone

KEYS = (0, 2, 4, 6)
PROMPTS = ["a red circle moving left", "a blue square moving up", "a green triangle moving right",
           "a red square moving down", "a blue circle moving left"]


@contextmanager
def one_thread() -> Iterator[None]:
    """For module fixtures, which run before the suite's one-thread fixture (and CPU bits depend on threads)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def tiny_teacher(schedule=None, seed: int = 0) -> ToyBackbone:
    torch.manual_seed(seed)
    model = ToyBackbone(schedule=schedule, base_channels=8, channel_mult=(1, 2), emb_dim=16, text_dim=16,
                        num_frames=4, size=8, steps=6, cfg=3.0)
    with torch.no_grad():  # the zero-initialised output layers would make every trajectory constant
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


def tensor_span(path, name: str) -> tuple[int, int]:
    """Byte range ``[start, end)`` of tensor ``name`` in a safetensors file (8-byte header size, JSON header, data)."""
    import json
    import struct

    with open(path, "rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        begin, end = json.loads(f.read(size))[name]["data_offsets"]
    return 8 + size + begin, 8 + size + end


def rehash(root, index: int) -> None:
    """Make every manifest of ``root`` list shard ``index`` with its current sha256 and size (as if the bytes on
    disk were what the synthesis wrote), so that only a content check can catch a tampered shard."""
    import json
    from pathlib import Path

    from vdistill.data.shards import file_sha256, shard_name

    root = Path(root)
    shard = root / shard_name(index)
    for manifest in [root / "manifest.json", *root.glob("manifest-r*.json")]:
        if not manifest.is_file():
            continue
        data = json.loads(manifest.read_text())
        for entry in data["shards"]:
            if entry["index"] == index:
                entry.update(sha256=file_sha256(shard), bytes=shard.stat().st_size)
        manifest.write_text(json.dumps(data, indent=1))


def write_nan(root, index: int, row: int, tensor: str = "latents") -> None:
    """Overwrite the first value of row ``row`` of ``tensor`` in shard ``index`` with NaN (a float32 or bfloat16
    shard; the file keeps its size and header) and fix up the manifests' sha256 and size."""
    from pathlib import Path

    from vdistill.data.shards import read_shard, shard_name

    path = Path(root) / shard_name(index)
    start, end = tensor_span(path, tensor)
    tensors, _ = read_shard(path)
    item = tensors[tensor].element_size()
    offset = start + row * (end - start) // tensors[tensor].shape[0]
    nan = torch.tensor([float("nan")], dtype=tensors[tensor].dtype).view(torch.uint8).numpy().tobytes()
    assert len(nan) == item
    data = bytearray(path.read_bytes())
    data[offset: offset + item] = nan
    path.write_bytes(bytes(data))
    rehash(root, index)


def flip_bit(path, tensor: str = "latents") -> None:
    """Flip one bit in the middle of ``tensor``'s bytes (same size, header intact; the manifest is left alone)."""
    start, end = tensor_span(path, tensor)
    data = bytearray(open(path, "rb").read())
    data[(start + end) // 2] ^= 0x10
    with open(path, "wb") as f:
        f.write(bytes(data))
