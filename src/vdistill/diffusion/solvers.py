"""Deterministic solver steps: DDIM (eta 0) for DDPM teachers and Euler for flow teachers.

Both are :meth:`NoiseSchedule.step`: predict ``(x0, eps)`` at ``t`` and re-noise them to ``t_next``. For the
linear rectified-flow path this is exactly the Euler step ``x + (t_next - t) * v`` (tested against diffusers).
"""

from __future__ import annotations

from torch import Tensor

from vdistill.diffusion.schedules import DDPMSchedule, FlowSchedule


def ddim_step(schedule: DDPMSchedule, raw: Tensor, x_t: Tensor, t: Tensor, t_next: Tensor) -> Tensor:
    """DDIM (Song et al. 2021) with eta 0 from ``t`` to ``t_next`` (``-1`` = clean)."""
    return schedule.step(raw, x_t, t, t_next)


def euler_step(schedule: FlowSchedule, velocity: Tensor, x_t: Tensor, t: Tensor, t_next: Tensor) -> Tensor:
    """Euler step of the flow ODE ``dx/dt = v`` from ``t`` to ``t_next``."""
    dt = (t_next - t).to(x_t.device).reshape(-1, *([1] * (x_t.ndim - 1))).to(x_t.dtype)
    return x_t + dt * velocity
