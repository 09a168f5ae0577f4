"""The diffusers scheduler that reproduces a vdistill sampler in a pipeline's plain call
``pipe(prompt, num_inference_steps=<steps>, guidance_scale=1.0)``: a stock scheduler wherever a config of it visits
exactly the student's times, else one of vdistill's own (:mod:`vdistill.diffusion.pipeline_schedulers`).

* Flow students stepping Euler along ``grid`` (AccVideo key timesteps, or a plain model's shifted grid):
  ``FlowMatchEulerDiscreteScheduler`` reproduces every grid ``shift_s(1 - i/m)`` (key points evenly spaced on
  the teacher's shifted grid) with ``shift = a`` and ``shift_terminal = shift_s(1/m)``. Its ``set_timesteps(m)``
  shifts twice (the training sigmas' ``sigma_min = shift_a(1/T)`` is shifted again) and stretches ``1 - sigma``
  linearly to the terminal value; equating that with ``shift_s`` term by term gives
  ``(s-1)(m-1) e a^2 - (1-e)(s+m-1) a + (1-e) s m = 0`` with ``e = 1/T`` (its smaller root; ``a = 1`` for ``s = 1``).
  Other grids get :class:`~vdistill.diffusion.pipeline_schedulers.KeyTimestepEulerScheduler`.
* DDPM students stepping DDIM along ``grid``: ``DDIMScheduler`` with ``set_alpha_to_one`` and the first of the
  ``trailing`` / ``leading`` / ``linspace`` spacings that visits ``grid`` (its steps all go
  ``num_train_timesteps // m`` down); other grids get ``KeyTimestepDDIMScheduler``.
* Consistency students (:func:`vdistill.backbones.student.set_consistency_sampling`): DDPM: ``LCMScheduler``
  (``original_inference_steps`` = the student's grid; its timesteps, scalings and re-noising are vdistill's,
  tested against it); flow: ``FlowConsistencyScheduler`` (diffusers' ``FlowMatchLCMScheduler`` has no boundary
  scalings, and ``WanPipeline`` does not seed its per-step noise).

Every choice is checked: the scheduler's ``set_timesteps`` must give the student's times (within 1e-6).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from vdistill.diffusion.consistency import lcm_timesteps
from vdistill.diffusion.schedules import DDPMSchedule, NoiseSchedule

#: how far the scheduler's times may be from the student's
TOLERANCE = 1e-6
DDIM_SPACINGS = ("trailing", "leading", "linspace")


def flow_euler_config(grid: Sequence[float], num_train_timesteps: int = 1000) -> dict | None:
    """The ``FlowMatchEulerDiscreteScheduler`` config whose ``set_timesteps(len(grid) - 1)`` gives ``grid``
    (descending sigmas from 1 to 0), or ``None`` when the grid is not ``shift_s(1 - i/m)`` for some ``s``."""
    m = len(grid) - 1
    if m < 1 or abs(grid[0] - 1.0) > TOLERANCE or abs(grid[-1]) > TOLERANCE:
        return None
    if m == 1:
        return {"num_train_timesteps": num_train_timesteps, "shift": 1.0}
    g, v = float(grid[1]), 1.0 - 1.0 / m
    if not 0 < g < 1:
        return None
    s = g * (1 - v) / (v * (1 - g))  # the teacher's shift: g = shift_s(v)
    e = 1.0 / num_train_timesteps
    qa, qb, qc = (s - 1) * (m - 1) * e, -(1 - e) * (s + m - 1), (1 - e) * s * m
    a = -qc / qb if abs(qa) < 1e-12 else (-qb - math.sqrt(qb * qb - 4 * qa * qc)) / (2 * qa)
    cfg = {"num_train_timesteps": num_train_timesteps, "shift": a, "shift_terminal": float(grid[-2])}
    return cfg if _flow_matches(cfg, grid) else None


def _flow_matches(cfg: dict, grid: Sequence[float]) -> bool:
    from diffusers import FlowMatchEulerDiscreteScheduler

    try:
        sched = FlowMatchEulerDiscreteScheduler(**cfg)
        sched.set_timesteps(len(grid) - 1)
    except ValueError:
        return False
    return bool(torch.allclose(sched.sigmas.double(), torch.tensor(grid, dtype=torch.float64), atol=TOLERANCE, rtol=0))


def ddpm_config(schedule: DDPMSchedule) -> dict:
    """The diffusers config keys of a :class:`DDPMSchedule` (DDIM / LCM share them); the clean end is ``-1``
    (``alpha_bar = 1``): ``set_alpha_to_one``."""
    clip = schedule.clip_sample
    cfg = {"num_train_timesteps": schedule.num_train_timesteps, "beta_schedule": schedule.beta_schedule,
           "prediction_type": schedule.prediction_type, "clip_sample": clip is not None,
           "clip_sample_range": 1.0 if clip is None else float(clip), "set_alpha_to_one": True, "steps_offset": 0}
    if schedule.beta_schedule != "squaredcos_cap_v2":
        cfg.update(beta_start=schedule.beta_start, beta_end=schedule.beta_end)
    return cfg


def ddim_config(schedule: DDPMSchedule, grid: Sequence[float]) -> dict | None:
    """The ``DDIMScheduler`` config that steps exactly through ``grid`` (descending DDPM indices, ending below 0),
    or ``None``."""
    from diffusers import DDIMScheduler

    m, T = len(grid) - 1, schedule.num_train_timesteps
    keys = [int(round(t)) for t in grid]
    for spacing in DDIM_SPACINGS:
        cfg = {**ddpm_config(schedule), "timestep_spacing": spacing}
        sched = DDIMScheduler(**cfg)
        sched.set_timesteps(m)
        visits = [int(t) for t in sched.timesteps]
        ends = [t - T // m for t in visits]  # DDIMScheduler.step's previous timestep
        if visits == keys[:-1] and all(e == k or (e < 0 and k < 0) for e, k in zip(ends, keys[1:], strict=True)):
            return cfg
    return None


def export_scheduler(schedule: NoiseSchedule, grid: Sequence[float], consistency: dict | None = None):
    """``(scheduler, stock)``: the diffusers scheduler of a student that samples along ``grid`` (``steps + 1``
    schedule times, noisiest first; for a consistency student its record ``{guidance, original_steps, steps}``
    decides instead) and whether it is a stock diffusers class (module docstring)."""
    from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler, LCMScheduler

    from vdistill.diffusion import pipeline_schedulers as own

    grid = [float(t) for t in grid]
    if consistency is not None:
        times = lcm_timesteps(schedule, int(consistency["steps"]), int(consistency["original_steps"]))
        if schedule.kind == "ddpm":
            sched = LCMScheduler(**ddpm_config(schedule), original_inference_steps=int(consistency["original_steps"]))
            sched.set_timesteps(int(consistency["steps"]))
            if not torch.equal(sched.timesteps, times.long()):
                raise AssertionError(f"LCMScheduler visits {sched.timesteps.tolist()}, the student {times.tolist()}")
            return sched, True
        return own.FlowConsistencyScheduler(consistency_sigmas=times.tolist(), shift=1.0,
                                            num_train_timesteps=schedule.num_train_timesteps), False
    if schedule.kind == "ddpm":
        cfg = ddim_config(schedule, grid)
        if cfg is not None:
            return DDIMScheduler(**cfg), True
        return own.KeyTimestepDDIMScheduler(key_timesteps=[int(round(t)) for t in grid], **ddpm_config(schedule)), False
    cfg = flow_euler_config(grid, schedule.num_train_timesteps)
    if cfg is not None:
        return FlowMatchEulerDiscreteScheduler(**cfg), True
    return own.KeyTimestepEulerScheduler(key_sigmas=grid, shift=1.0,
                                         num_train_timesteps=schedule.num_train_timesteps), False
