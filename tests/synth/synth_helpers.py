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
