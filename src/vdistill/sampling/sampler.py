"""Sampling a backbone: N solver steps (DDIM for DDPM teachers, Euler for flow teachers), optional CFG or
embedded guidance, optional capture of the latents at chosen step indices (the trajectory's key points)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from vdistill.backbones.base import Backbone, TextCond, text_to


@dataclass
class SampleResult:
    """``latents``: final clean latents; ``trajectory``: ``{step index: latents}`` (index 0 = the noise);
    ``timesteps``: the grid (``steps + 1`` schedule times)."""

    latents: Tensor
    timesteps: Tensor
    trajectory: dict[int, Tensor] = field(default_factory=dict)


def initial_noise(shape: Sequence[int], seeds: Sequence[int], device: torch.device | str = "cpu") -> Tensor:
    """One Gaussian latent per seed (``[len(seeds), *shape]``), independent of batch composition."""
    return torch.stack([torch.randn(*shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds]).to(device)


@torch.no_grad()
def sample_latents(
    model: Backbone,
    noise: Tensor,
    text: TextCond,
    steps: int | None = None,
    timesteps: Tensor | None = None,
    uncond: TextCond | None = None,
    cfg: float = 1.0,
    guidance: float | None = None,
    capture: Sequence[int] = (),
) -> SampleResult:
    """Integrate from ``noise`` ``[B, C, T, H, W]`` along ``timesteps`` (default: the schedule's ``steps`` grid,
    or a distilled student's ``key_timesteps`` when ``steps`` is its own step count).

    ``guidance`` feeds an embedded guidance scale (students with the LCM embedding); ``cfg`` > 1 with
    ``uncond`` runs classifier-free guidance as one batched forward per step.
    """
    if timesteps is None:
        n = steps or model.defaults.steps
        keys = model.key_timesteps  # a distilled student samples along its own key timesteps
        timesteps = torch.tensor(keys) if keys is not None and n == len(keys) - 1 \
            else model.schedule.sampling_timesteps(n)
    grid = timesteps
    b = noise.shape[0]
    dev = noise.device
    dtype = next(model.denoiser.parameters()).dtype
    text = text_to(text, dev, dtype)
    uncond = None if uncond is None else text_to(uncond, dev, dtype)
    g = None if guidance is None else torch.full((b,), float(guidance), device=dev)
    x = noise.to(dtype)
    wanted = set(capture)
    trajectory = {0: x.clone()} if 0 in wanted else {}
    for i in range(len(grid) - 1):
        t = grid[i].expand(b).to(dev)
        raw = model.predict(x, t, text, uncond, cfg, g)
        x = model.schedule.step(raw.float(), x.float(), t, grid[i + 1].expand(b).to(dev)).to(dtype)
        if i + 1 in wanted:
            trajectory[i + 1] = x.clone()
    return SampleResult(latents=x, timesteps=grid, trajectory=trajectory)
