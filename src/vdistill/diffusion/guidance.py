"""Classifier-free guidance and the LCM guidance-scale embedding.

Conventions (T2V-Turbo / LCM): ``pred = uncond + w * (cond - uncond)``; the student sees ``w`` as a 256-dim
sinusoidal embedding of ``1000 * w`` (``get_guidance_scale_embedding`` of the diffusers LCM pipeline).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def apply_cfg(cond: Tensor, uncond: Tensor, scale: float | Tensor) -> Tensor:
    if isinstance(scale, Tensor):
        scale = scale.reshape(-1, *([1] * (cond.ndim - 1))).to(cond.dtype)
    return uncond + scale * (cond - uncond)


def guidance_scale_embedding(w: Tensor, dim: int = 256, dtype: torch.dtype = torch.float32) -> Tensor:
    """Sinusoidal embedding ``[B, dim]`` of guidance scales ``w`` ``[B]`` (scaled by 1000), sin then cos."""
    # Written out, not reused: the LCM pipeline's method makes its frequencies on the CPU and in the output dtype
    # (fails for CUDA ``w``, loses bf16 precision), and diffusers' get_timestep_embedding(1000 * w, dim,
    # downscale_freq_shift=1) rounds the frequencies in another order: up to 1e-3 off for w <= 16.
    w = w.float() * 1000.0
    half = dim // 2
    freqs = torch.exp(torch.arange(half, dtype=torch.float32, device=w.device) * -(math.log(10000.0) / (half - 1)))
    emb = w[:, None] * freqs[None, :]
    emb = torch.cat([torch.sin(emb), torch.cos(emb)], dim=1)
    if dim % 2 == 1:
        emb = torch.nn.functional.pad(emb, (0, 1))
    return emb.to(dtype)
