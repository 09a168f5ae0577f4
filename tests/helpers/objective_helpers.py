"""Tiny frozen toy teachers (4 frames of 8x8), random key-point batches and tiny key-point sets on disk for the
objective and module tests."""

from __future__ import annotations

from pathlib import Path

import torch

from vdistill.backbones.toy import ToyBackbone
from vdistill.diffusion.schedules import FlowSchedule
from vdistill.synth import synthesize

PROMPTS = ["a red circle moving left", "a blue square moving up", "a green triangle moving right"]
#: the prompts of :func:`synth_keys`
KEY_PROMPTS = PROMPTS[:2]


def tiny_toy(schedule=None, seed: int = 0) -> ToyBackbone:
    torch.manual_seed(seed)
    model = ToyBackbone(schedule=schedule or FlowSchedule(shift=3.0), base_channels=8, channel_mult=(1, 2),
                        emb_dim=16, text_dim=16, num_frames=4, size=8, steps=6, cfg=3.0)
    with torch.no_grad():  # the zero-initialised output layers would make every prediction zero
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.requires_grad_(False).eval()


def key_batch(model: ToyBackbone, indices=(0, 2, 4, 6), batch: int = 2, seed: int = 0) -> dict:
    """Random latents at the key timesteps of the model's 6-step grid: ``latents`` [B, K, 3, 4, 8, 8]."""
    g = torch.Generator().manual_seed(seed)
    grid = model.schedule.sampling_timesteps(6)[list(indices)]
    with torch.no_grad():
        text = model.encode_text(PROMPTS[:batch])
    return {"latents": torch.randn(batch, len(indices), 3, 4, 8, 8, generator=g),
            "timesteps": grid.expand(batch, -1).clone(), "text": text}


def synth_keys(teacher, out: Path, keys: tuple[int, ...] = (0, 2, 4), **size) -> Path:
    """Key points ``keys`` of 4 teacher steps for :data:`KEY_PROMPTS` (two shards of one) in ``out``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # fixtures run before the suite's one-thread fixture
    try:
        synthesize(teacher, KEY_PROMPTS, out, key_indices=keys, steps=4, dtype="float32", shard_size=2, batch_size=2,
                   progress=False, **size)
    finally:
        torch.set_num_threads(before)
    return out
