"""Procedural "moving shapes" videos: one hard-edged palette-coloured object on black, constant velocity."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from vdistill.world.captions import COLOURS, MOTION_VECTORS, Caption

# Supersampling factor: coverage >= 1/2 of a pixel's sub-samples decides membership (steadier area over frames).
_SS = 4


@dataclass(frozen=True)
class WorldConfig:
    """Size of the toy world's videos and the ranges of the jittered attributes (fractions of the frame)."""

    num_frames: int = 8
    size: int = 16
    object_size: tuple[float, float] = (0.30, 0.45)
    travel: tuple[float, float] = (1 / 3, 1 / 2)


def shape_mask(shape: str, cx: np.ndarray, cy: np.ndarray, r: float, size: int) -> np.ndarray:
    """Boolean masks ``[T, size, size]`` of a shape of half-extent ``r`` centred at ``(cx[t], cy[t])`` (pixels).

    Triangles point up: apex at ``cy - r``, base of width ``2r`` at ``cy + r``.
    """
    sub = (np.arange(size * _SS) + 0.5) / _SS
    x = sub[None, None, :] - cx[:, None, None]
    y = sub[None, :, None] - cy[:, None, None]
    if shape == "circle":
        inside = x**2 + y**2 <= r**2
    elif shape == "square":
        inside = (np.abs(x) <= r) & (np.abs(y) <= r)
    elif shape == "triangle":
        inside = (y >= -r) & (y <= r) & (np.abs(x) <= (y + r) / 2)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    cover = inside.reshape(len(cx), size, _SS, size, _SS).mean(axis=(2, 4))
    return cover >= 0.5


def render(caption: Caption, rng: np.random.Generator, cfg: WorldConfig = WorldConfig()) -> np.ndarray:
    """One video ``[T, 3, H, W]`` float32 in [0, 1] showing ``caption`` with random size, travel and position."""
    n, T = cfg.size, cfg.num_frames
    extent = rng.uniform(*cfg.object_size) * n
    r = extent / 2
    travel = rng.uniform(*cfg.travel) * n
    dx, dy = MOTION_VECTORS[caption.motion]
    # Keep the whole path inside the frame: along the motion axis the centre sweeps `travel` pixels.
    lo, hi = r, n - r
    along0 = rng.uniform(lo, max(lo, hi - travel))
    across = rng.uniform(lo, hi)
    steps = np.linspace(0.0, travel, T)
    if dx != 0:
        start = along0 if dx > 0 else n - along0
        cx, cy = start + dx * steps, np.full(T, across)
    else:
        start = along0 if dy > 0 else n - along0
        cx, cy = np.full(T, across), start + dy * steps
    mask = shape_mask(caption.shape, cx, cy, r, n)
    colour = np.asarray(COLOURS[caption.colour], dtype=np.float32)
    return (mask[:, None, :, :] * colour[None, :, None, None]).astype(np.float32)


def render_batch(captions: list[Caption], seed: int, cfg: WorldConfig = WorldConfig()) -> torch.Tensor:
    """Videos ``[B, T, 3, H, W]`` in [0, 1]; deterministic in ``seed``."""
    rng = np.random.default_rng(seed)
    return torch.from_numpy(np.stack([render(c, rng, cfg) for c in captions]))
