"""Consistency-model boundary scalings (Song et al. 2023; LCM, T2V-Turbo: sigma_data 0.5, timestep scaling 10).

The student's output ``f(x_t, t) = c_skip(t) * x_t + c_out(t) * x0_hat`` equals ``x_t`` at ``t = 0``.
"""

from __future__ import annotations

from torch import Tensor


def boundary_scalings(t: Tensor, sigma_data: float = 0.5, timestep_scaling: float = 10.0) -> tuple[Tensor, Tensor]:
    """``(c_skip, c_out)`` for timesteps ``t`` ``[B]`` in the network's units (0..999 for DDPM)."""
    scaled = t.float() * timestep_scaling
    c_skip = sigma_data**2 / (scaled**2 + sigma_data**2)
    c_out = scaled / (scaled**2 + sigma_data**2) ** 0.5
    return c_skip, c_out
