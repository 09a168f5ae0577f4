"""Noise schedules: the forward process ``x_t = alpha(t) * x0 + sigma(t) * eps`` and prediction conversions.

Two families share one interface so that samplers and objectives never branch on the teacher's kind:

* :class:`DDPMSchedule`: discrete timesteps ``t`` in ``[0, T-1]`` (T = 1000), ``alpha_bar`` from linear or
  scaled-linear betas (Ho et al. 2020; Stable Diffusion), network predicts ``epsilon``, ``v`` or ``x0``.
  The terminal value ``t = -1`` means "clean" (``alpha_bar = 1``), as DDIM's ``set_alpha_to_one``.
* :class:`FlowSchedule`: rectified flow, ``t = sigma`` in ``[0, 1]``, ``x_t = (1 - t) x0 + t eps``, the network
  predicts the velocity ``eps - x0`` and sees ``1000 * t`` (Wan, HunyuanVideo), sampling grids use the
  timestep shift ``s' = shift * s / (1 + (shift - 1) * s)`` (SD3 / Wan / HunyuanVideo).

All ``t`` arguments are float tensors of shape ``[B]``; latents have any shape with batch first.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import numpy as np
import torch
from torch import Tensor

from vdistill.config import RecordsInit
from vdistill.errors import UserError


def _bcast(coef: Tensor, like: Tensor) -> Tensor:
    return coef.reshape(-1, *([1] * (like.ndim - 1))).to(like.dtype)


class NoiseSchedule(RecordsInit, ABC):
    """Base class of the forward processes; see the module docstring."""

    kind: str
    prediction_type: str
    prediction_types: tuple[str, ...]

    def __init__(self, prediction_type: str) -> None:
        if prediction_type not in self.prediction_types:
            raise UserError(
                f"prediction_type {prediction_type!r} is not valid for {type(self).__name__}; "
                f"choose one of {list(self.prediction_types)}"
            )
        self.prediction_type = prediction_type

    # -- the forward process ------------------------------------------------------------------------------
    @abstractmethod
    def coefficients(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """``(alpha(t), sigma(t))``, each ``[B]`` float32."""

    @abstractmethod
    def model_timestep(self, t: Tensor) -> Tensor:
        """The timestep value the network is conditioned on (``[B]``)."""

    @abstractmethod
    def sampling_timesteps(self, num_steps: int) -> Tensor:
        """Descending grid of ``num_steps + 1`` times, from pure noise to the clean terminal value."""

    @abstractmethod
    def sample_training_timesteps(self, batch: int, generator: torch.Generator | None = None) -> Tensor:
        """Random training times ``[B]`` (float)."""

    def add_noise(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        alpha, sigma = self.coefficients(t.to(x0.device))
        return _bcast(alpha, x0) * x0 + _bcast(sigma, x0) * noise

    # -- conversions between parameterisations -----------------------------------------------------------
    def to_x0_eps(self, raw: Tensor, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Turn the network's raw prediction into ``(x0, eps)``."""
        alpha, sigma = (_bcast(c, x_t) for c in self.coefficients(t.to(x_t.device)))
        p = self.prediction_type
        if p == "epsilon":
            eps = raw
            x0 = (x_t - sigma * eps) / alpha
        elif p == "v_prediction":  # v = alpha eps - sigma x0 (Salimans & Ho 2022), alpha^2 + sigma^2 = 1
            x0 = alpha * x_t - sigma * raw
            eps = sigma * x_t + alpha * raw
        elif p == "sample":
            x0 = raw
            eps = (x_t - alpha * x0) / sigma
        else:  # flow: v = eps - x0, x_t = (1 - t) x0 + t eps
            x0 = x_t - sigma * raw
            eps = x_t + alpha * raw
        return x0, eps

    def from_x0_eps(self, x0: Tensor, eps: Tensor, t: Tensor) -> Tensor:
        """The raw prediction (training target) that corresponds to ``(x0, eps)`` at ``t``."""
        alpha, sigma = (_bcast(c, x0) for c in self.coefficients(t.to(x0.device)))
        p = self.prediction_type
        if p == "epsilon":
            return eps
        if p == "v_prediction":
            return alpha * eps - sigma * x0
        if p == "sample":
            return x0
        return eps - x0

    def to_x0(self, raw: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        return self.to_x0_eps(raw, x_t, t)[0]

    # -- the deterministic step shared by DDIM (eta 0) and Euler flow --------------------------------------
    def step(self, raw: Tensor, x_t: Tensor, t: Tensor, t_next: Tensor) -> Tensor:
        """One deterministic solver step from ``t`` to ``t_next`` (DDIM eta 0 / Euler for rectified flow:
        for the linear flow path the Euler step equals re-noising the predicted x0 with the predicted eps)."""
        x0, eps = self.to_x0_eps(raw, x_t, t)
        return self.add_noise(x0, eps, t_next)

    def describe(self) -> dict:
        """A plain description used to check that data was made by a matching teacher."""
        return {"kind": self.kind, "prediction_type": self.prediction_type}


class DDPMSchedule(NoiseSchedule):
    """Discrete DDPM schedule (variance preserving).

    Args:
        beta_schedule: ``linear`` (DDPM's pixel-space 1e-4..0.02), ``scaled_linear`` (Stable Diffusion /
            ModelScope / VideoCrafter latents, 0.00085..0.012) or ``squaredcos_cap_v2`` (the cosine schedule of
            Nichol & Dhariwal 2021 for small images; ``beta_start`` / ``beta_end`` do not apply).
        beta_start, beta_end: override the endpoints; ``None`` takes the schedule's default.
        prediction_type: ``epsilon``, ``v_prediction`` or ``sample``.
        timestep_spacing: ``trailing`` (diffusers' grid ``round(arange(T, 0, -T / N)) - 1``, starts at ``T - 1``;
            the T2V-Turbo DDIM grid) or ``leading`` (diffusers' DDIM default, ``arange(0, N) * T // N`` reversed).
    """

    kind = "ddpm"
    prediction_types = ("epsilon", "v_prediction", "sample")
    _defaults = {"linear": (1e-4, 0.02), "scaled_linear": (0.00085, 0.012), "squaredcos_cap_v2": (None, None)}

    def __init__(
        self,
        beta_schedule: str = "scaled_linear",
        beta_start: float | None = None,
        beta_end: float | None = None,
        prediction_type: str = "epsilon",
        num_train_timesteps: int = 1000,
        timestep_spacing: str = "trailing",
        clip_sample: float | None = None,
    ) -> None:
        super().__init__(prediction_type)
        self.clip_sample = clip_sample
        if beta_schedule not in self._defaults:
            raise UserError(f"beta_schedule {beta_schedule!r} is not known; choose one of {list(self._defaults)}")
        if timestep_spacing not in ("trailing", "leading"):
            raise UserError(f"timestep_spacing {timestep_spacing!r}; choose 'trailing' or 'leading'")
        start, end = self._defaults[beta_schedule]
        self.beta_schedule = beta_schedule
        self.beta_start = start if beta_start is None else beta_start
        self.beta_end = end if beta_end is None else beta_end
        self.num_train_timesteps = num_train_timesteps
        self.timestep_spacing = timestep_spacing
        n = num_train_timesteps
        if beta_schedule == "linear":
            betas = torch.linspace(self.beta_start, self.beta_end, n, dtype=torch.float64)
        elif beta_schedule == "squaredcos_cap_v2":  # Nichol & Dhariwal 2021, as diffusers' betas_for_alpha_bar
            f = lambda x: torch.cos((x + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
            i = torch.arange(n, dtype=torch.float64)
            betas = (1 - f((i + 1) / n) / f(i / n)).clamp(max=0.999)
        else:
            betas = torch.linspace(self.beta_start**0.5, self.beta_end**0.5, n, dtype=torch.float64) ** 2
        self.alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)

    def alpha_bar(self, t: Tensor) -> Tensor:
        idx = t.round().long()
        table = self.alphas_cumprod.to(t.device)
        out = table[idx.clamp(min=0)]
        return torch.where(idx < 0, torch.ones_like(out), out)

    def coefficients(self, t: Tensor) -> tuple[Tensor, Tensor]:
        ab = self.alpha_bar(t)
        return ab.sqrt().float(), (1 - ab).sqrt().float()

    def model_timestep(self, t: Tensor) -> Tensor:
        return t

    def sampling_timesteps(self, num_steps: int) -> Tensor:
        n, T = num_steps, self.num_train_timesteps
        if not 1 <= n <= T:
            raise UserError(f"num_steps must be in [1, {T}], got {n}")
        if self.timestep_spacing == "trailing":
            # numpy's arange as diffusers: ties such as 937.5 (n = 48) round as there; its float length can
            # come out n + 1 (n = 61), so keep the first n entries
            grid = torch.from_numpy(np.round(np.arange(T, 0, -T / n))[:n].copy()) - 1
        else:
            grid = torch.arange(0, n, dtype=torch.float64, device="cpu").flip(0) * (T // n)
        return torch.cat([grid, torch.tensor([-1.0], dtype=torch.float64, device="cpu")]).float()

    def sample_training_timesteps(self, batch: int, generator: torch.Generator | None = None) -> Tensor:
        return torch.randint(0, self.num_train_timesteps, (batch,), generator=generator).float()

    def step(self, raw: Tensor, x_t: Tensor, t: Tensor, t_next: Tensor) -> Tensor:
        if self.clip_sample is None:
            return super().step(raw, x_t, t, t_next)
        x0, eps = self.to_x0_eps(raw, x_t, t)
        return self.add_noise(x0.clamp(-self.clip_sample, self.clip_sample), eps, t_next)

    def describe(self) -> dict:
        return {**super().describe(), "clip_sample": self.clip_sample, "beta_schedule": self.beta_schedule,
                "beta_start": self.beta_start,
                "beta_end": self.beta_end, "num_train_timesteps": self.num_train_timesteps,
                "timestep_spacing": self.timestep_spacing}


class FlowSchedule(NoiseSchedule):
    """Rectified flow (``x_t = (1 - t) x0 + t eps``) with the sampling timestep shift of Wan / HunyuanVideo.

    Args:
        shift: timestep shift of the sampling grid (1 = none; Wan 480p uses 3-5, HunyuanVideo 7).
        logit_normal_mean, logit_normal_std: training times ``t = sigmoid(N(mean, std))`` (SD3).
    """

    kind = "flow"
    prediction_types = ("flow",)
    num_train_timesteps = 1000

    def __init__(self, shift: float = 1.0, logit_normal_mean: float = 0.0, logit_normal_std: float = 1.0) -> None:
        super().__init__("flow")
        if shift <= 0:
            raise UserError(f"shift must be > 0, got {shift}")
        self.shift = float(shift)
        self.logit_normal_mean = logit_normal_mean
        self.logit_normal_std = logit_normal_std

    def coefficients(self, t: Tensor) -> tuple[Tensor, Tensor]:
        t = t.float()
        return 1 - t, t

    def model_timestep(self, t: Tensor) -> Tensor:
        return t * self.num_train_timesteps

    def shift_sigmas(self, s: Tensor) -> Tensor:
        return self.shift * s / (1 + (self.shift - 1) * s)

    def sampling_timesteps(self, num_steps: int) -> Tensor:
        if num_steps < 1:
            raise UserError(f"num_steps must be >= 1, got {num_steps}")
        # host values whatever the default device (a model built under ``torch.device("meta")`` reads them too)
        return self.shift_sigmas(torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float64, device="cpu")).float()

    def sample_training_timesteps(self, batch: int, generator: torch.Generator | None = None) -> Tensor:
        z = torch.randn(batch, generator=generator) * self.logit_normal_std + self.logit_normal_mean
        return torch.sigmoid(z)

    def describe(self) -> dict:
        return {**super().describe(), "shift": self.shift}


def timesteps_at(grid: Tensor, indices: list[int]) -> Tensor:
    """The times of a sampling grid at the given step indices (0 = pure noise, ``len(grid) - 1`` = clean)."""
    bad = [i for i in indices if not 0 <= i < len(grid)]
    if bad:
        raise UserError(f"step indices {bad} are outside the {len(grid) - 1}-step grid (valid 0..{len(grid) - 1})")
    return grid[torch.tensor(indices, dtype=torch.long)]


__all__ = ["NoiseSchedule", "DDPMSchedule", "FlowSchedule", "timesteps_at"]
