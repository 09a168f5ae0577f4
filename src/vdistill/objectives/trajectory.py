"""Trajectory-based few-step guidance (AccVideo, arXiv 2503.19462, Eq. 6).

For every adjacent pair of key points ``(x_k, t_k) -> (x_{k+1}, t_{k+1})`` of a teacher trajectory (noisiest
first), the student's raw prediction at the noisier point is regressed (squared L2, mean) onto the prediction
that makes ONE solver step land exactly on the teacher's next key point. The deterministic step of every
schedule (DDIM eta 0, Euler flow) is affine in the raw prediction ``r``: ``x_{k+1} = A x_k + B r``, so the target
is ``r* = (x_{k+1} - A x_k) / B``. For rectified flow ``A = 1`` and ``B = t_{k+1} - t_k``: the paper's
finite-difference velocity ``(x_k - x_{k+1}) / (t_k - t_{k+1})``; for DDPM teachers it is the DDIM jump in the
teacher's own parameterisation (epsilon, v or sample).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from vdistill.backbones.base import TextCond
from vdistill.diffusion.schedules import NoiseSchedule
from vdistill.objectives.base import Models, Objective


def jump_coefficients(schedule: NoiseSchedule, t: Tensor, t_next: Tensor) -> tuple[Tensor, Tensor]:
    """``(A, B)``, each ``[N]``, with ``schedule.step(r, x, t, t_next) == A * x + B * r`` for times ``[N]``.

    Read off the step itself (it is linear in ``(r, x)``), so every schedule and parameterisation is covered. The
    plain (unclipped) step is used: a sampler's x0 clipping would make it non-linear.
    """
    ones = torch.ones(t.shape[0], 1, device=t.device)
    zeros = torch.zeros_like(ones)
    a = NoiseSchedule.step(schedule, zeros, ones, t, t_next)[:, 0]
    b = NoiseSchedule.step(schedule, ones, zeros, t, t_next)[:, 0]
    return a, b


def jump_target(schedule: NoiseSchedule, x: Tensor, x_next: Tensor, t: Tensor, t_next: Tensor) -> Tensor:
    """The raw prediction at ``(x, t)`` whose solver step reaches ``x_next`` at ``t_next`` (latents ``[N, ...]``,
    times ``[N]``); float32."""
    a, b = jump_coefficients(schedule, t.float(), t_next.float())
    shape = (-1,) + (1,) * (x.ndim - 1)
    return (x_next.float() - a.reshape(shape) * x.float()) / b.reshape(shape)


@dataclass
class KeyPointPredictions:
    """The student's predictions at every noisier key point of a batch, flattened to ``N = B * (K - 1)`` rows
    (sample-major): ``x`` / ``x_next`` ``[N, C, T, H, W]`` float32, ``t`` / ``t_next`` ``[N]``, ``raw`` (with
    gradient), ``text`` (each sample's conditioning repeated ``K - 1`` times), ``pairs = K - 1``."""

    x: Tensor
    x_next: Tensor
    t: Tensor
    t_next: Tensor
    raw: Tensor
    text: TextCond
    pairs: int


def key_point_predictions(batch: dict, models: Models) -> KeyPointPredictions:
    """The student's raw predictions at ``x_0 .. x_{K-2}`` of ``batch`` (``latents`` ``[B, K, C, T, H, W]``,
    ``timesteps`` ``[B, K]``, ``text``), ONE batched forward, cached in ``models.cache`` so that the trajectory and
    the adversarial objective share it."""
    if "key_points" in models.cache:
        return models.cache["key_points"]
    latents = batch["latents"].float()
    times = batch["timesteps"].float()
    b, k = latents.shape[:2]
    pairs = k - 1
    x = latents[:, :-1].flatten(0, 1)
    t = times[:, :-1].flatten()
    text = {name: v.repeat_interleave(pairs, dim=0) for name, v in batch["text"].items()}
    out = KeyPointPredictions(x=x, x_next=latents[:, 1:].flatten(0, 1), t=t, t_next=times[:, 1:].flatten(),
                              raw=models.student_raw(x, t, text), text=text, pairs=pairs)
    models.cache["key_points"] = out
    return out


class TrajectoryGuidance(Objective):
    """AccVideo's trajectory-based few-step guidance: the student learns the teacher's big jumps between key
    points (Eq. 6), so it goes from noise to video in ``m = K - 1`` steps along the key timesteps.

    Args:
        weight: weight of the loss (the paper's 1).

    Returns ``{"trajectory": mean squared error}`` and ``k{i}``: the error of pair ``(i, i + 1)`` (diagnostic).
    """

    name = "trajectory"
    needs = frozenset({"trajectory"})
    loss_terms = ("trajectory",)

    def forward(self, batch: dict, models: Models) -> dict[str, Tensor]:
        return trajectory_errors(batch, models)


def trajectory_errors(batch: dict, models: Models) -> dict[str, Tensor]:
    """Eq. 6 on ``batch``: ``{"trajectory": mean squared error, "k{i}": the mean of pair (i, i + 1), detached}``.
    Also the held-out loss (``Distillation.validation_step``)."""
    kp = key_point_predictions(batch, models)
    target = jump_target(models.student.schedule, kp.x, kp.x_next, kp.t, kp.t_next)
    err = (kp.raw.float() - target).square()
    per_pair = err.detach().flatten(1).mean(1).unflatten(0, (-1, kp.pairs)).mean(0)
    return {"trajectory": err.mean(), **{f"k{i}": v for i, v in enumerate(per_pair)}}

