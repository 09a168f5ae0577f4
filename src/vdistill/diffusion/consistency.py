"""Consistency-model boundary scalings (Song et al. 2023; LCM, T2V-Turbo: sigma_data 0.5, timestep scaling 10),
the consistency student's output ``f`` and the solver grid it is distilled and sampled on.

The student's output ``f(x_t, t) = c_skip(t) * x_t + c_out(t) * x0_hat`` equals ``x_t`` at ``t = 0``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from vdistill.diffusion.schedules import NoiseSchedule, _bcast
from vdistill.errors import UserError


def boundary_scalings(t: Tensor, sigma_data: float = 0.5, timestep_scaling: float = 10.0) -> tuple[Tensor, Tensor]:
    """``(c_skip, c_out)`` for timesteps ``t`` ``[B]`` in the network's units (0..999 for DDPM)."""
    scaled = t.float() * timestep_scaling
    c_skip = sigma_data**2 / (scaled**2 + sigma_data**2)
    c_out = scaled / (scaled**2 + sigma_data**2) ** 0.5
    return c_skip, c_out


def consistency_output(schedule: NoiseSchedule, raw: Tensor, x_t: Tensor, t: Tensor, clip: float | None = None,
                       sigma_data: float = 0.5, timestep_scaling: float = 10.0) -> Tensor:
    """``f(x_t, t) = c_skip x_t + c_out x0_hat`` (float32) for a raw prediction at latents ``x_t`` ``[B, ...]`` and
    schedule times ``t`` ``[B]``; the scalings see the network's timestep (``1000 t`` for flow).

    ``clip``: clamp ``x0_hat`` to ``[-clip, clip]`` first (LCMScheduler's ``clip_sample``; sampling only).
    """
    x0 = schedule.to_x0(raw.float(), x_t.float(), t)
    if clip is not None:
        x0 = x0.clamp(-clip, clip)
    c_skip, c_out = boundary_scalings(schedule.model_timestep(t.to(x_t.device)), sigma_data, timestep_scaling)
    return _bcast(c_skip, x0) * x_t.float() + _bcast(c_out, x0) * x0


def consistency_grid(schedule: NoiseSchedule, num_steps: int = 50) -> Tensor:
    """The N-step solver grid of consistency distillation, descending, ``num_steps + 1`` times ``[N + 1]``.

    DDPM: LCM / T2V-Turbo's ``arange(1..N) * (T // N) - 1`` (``[999, 979, ..., 19]`` for N = 50), then ``0``: the
    end of a solver step that would pass below 0 is clamped to 0 (T2V-Turbo), where ``c_skip = 1``. Flow: the
    schedule's own (shifted) N-step grid from 1 to 0.
    """
    if num_steps < 1:
        raise UserError(f"the consistency grid needs at least 1 step, got {num_steps}")
    if schedule.kind == "ddpm":
        k = schedule.num_train_timesteps // num_steps
        if k < 1:
            raise UserError(f"a {num_steps}-step grid does not fit {schedule.num_train_timesteps} DDPM timesteps")
        grid = torch.arange(num_steps, 0, -1, dtype=torch.float32) * k - 1
        return torch.cat([grid, torch.zeros(1)])
    return schedule.sampling_timesteps(num_steps)


def lcm_timesteps(schedule: NoiseSchedule, steps: int, original_steps: int = 50) -> Tensor:
    """The ``steps`` sampling times ``[steps]`` of a consistency student: evenly spaced indices into the
    ``original_steps`` grid without its clean end (LCMScheduler's ``set_timesteps(steps, original_steps)``)."""
    if not 1 <= steps <= original_steps:
        raise UserError(f"a consistency student samples with 1..{original_steps} steps (its grid), got {steps}")
    origin = consistency_grid(schedule, original_steps)[:-1]
    index = np.floor(np.linspace(0, original_steps, num=steps, endpoint=False)).astype(np.int64)
    return origin[torch.from_numpy(index)]
