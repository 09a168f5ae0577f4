"""Latent consistency distillation with an embedded guidance scale (LCM; T2V-Turbo's "VCM", arXiv 2405.18750).

For a real clip ``x0`` (its teacher-VAE latents: encoded on the fly, or read from a ``vdistill preprocess`` cache)
and prompt ``c``, per sample:

1. a start ``t_n`` uniform over the N-step solver grid (:func:`~vdistill.diffusion.consistency.consistency_grid`)
   and its end ``t_{n-k}``, ``k`` training timesteps later along the grid (clamped at the grid's clean end),
2. ``x_{t_n} = alpha(t_n) x0 + sigma(t_n) eps`` and ``w ~ U[w_min, w_max]``,
3. the frozen teacher takes ONE solver step from ``t_n`` to ``t_{n-k}`` (DDIM eta 0 for DDPM teachers, Euler for
   flow teachers) with classifier-free guidance in the LCM convention ``cond + w (cond - uncond)``, i.e. the
   standard scale ``1 + w``, the empty prompt as ``uncond``,
4. loss = pseudo-Huber( f_student(x_{t_n}, t_n; w), sg f_target(x_{t_{n-k}}, t_{n-k}; w) ), ``f = c_skip x +
   c_out x0_hat``, where the target network is the online student (T2V-Turbo's code) or its EMA (the paper;
   ``Distillation(target_ema_decay=0.95)``).

The student sees ``w`` through its guidance embedding (LCM: a zero-initialised projection of the sinusoidal
embedding of ``w`` added to its time embedding), so it samples with one forward per step, no CFG
(:mod:`vdistill.sampling.consistency`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from vdistill.backbones.base import Backbone, TextCond
from vdistill.backbones.student import DEFAULT_GUIDANCE, set_consistency_sampling
from vdistill.diffusion.consistency import consistency_grid, consistency_output
from vdistill.errors import UserError
from vdistill.objectives.base import Models, Objective


def pseudo_huber(a: Tensor, b: Tensor, c: float = 0.001) -> Tensor:
    """``mean(sqrt((a - b)^2 + c^2) - c)`` (Song & Dhariwal 2023; LCM / T2V-Turbo ``huber_c = 0.001``)."""
    return ((a.float() - b.float()).square() + c * c).sqrt().sub(c).mean()


@dataclass
class VideoBatch:
    """A batch of real clips encoded by the teacher: ``x0`` latents ``[B, C, T, H, W]`` (float32), ``text`` and
    the empty prompt's ``uncond`` (batch 1) conditionings, the ``prompts``."""

    x0: Tensor
    text: TextCond
    uncond: TextCond
    prompts: list[str]


def encode_videos(batch: dict, models: Models) -> VideoBatch:
    """The batch's clips as the teacher encodes them, once per step (cached in ``models.cache`` for every objective
    that reads the same clips).

    A batch of pixels (``videos`` ``[B, T, 3, H, W]`` in [0, 1], ``prompts``) is encoded by the frozen teacher's VAE and
    text encoder. A batch of a latent cache (:class:`~vdistill.data.latent_clips.LatentClips`: ``latents``
    ``[B, C, T', H', W']``, ``text``, ``uncond``, ``prompts``) was encoded by them once, by ``vdistill preprocess``:
    it is used as it is, so neither encoder runs (the empty prompt is encoded only when the batch lacks ``uncond``)."""
    if "videos" in models.cache:
        return models.cache["videos"]
    teacher, prompts = models.teacher, list(batch["prompts"])
    with torch.no_grad():
        # contiguous: ``randn_like`` lays its draws out in memory order, so a transposed view of the VAE's output
        # (ModelScope's, the toy's) would get other noise per element than the same latents read from a cache
        if "latents" in batch:
            uncond = batch["uncond"] if "uncond" in batch else teacher.encode_text([""])
            x0 = batch["latents"].float().contiguous()
            out = VideoBatch(x0=x0, text=batch["text"], uncond=uncond, prompts=prompts)
        else:
            x0 = teacher.encode_video(batch["videos"]).float().contiguous()
            out = VideoBatch(x0=x0, text=teacher.encode_text(prompts), uncond=teacher.encode_text([""]),
                             prompts=prompts)
    models.cache["videos"] = out
    return out


@dataclass
class ConsistencyPrediction:
    """The student's one-step clean estimate of this step, shared with reward objectives (T2V-Turbo scores it):
    ``x0`` ``[B, C, T, H, W]`` WITH gradient, at times ``t`` ``[B]`` and guidance ``w`` ``[B]``."""

    x0: Tensor
    t: Tensor
    w: Tensor


class ConsistencyDistillation(Objective):
    """Latent consistency distillation of the teacher's guided ODE into a few-step student (module docstring).

    Args:
        weight: weight of the loss.
        num_ddim_timesteps: N, the solver grid (T2V-Turbo v1 50, v2 200).
        skip: k, the span of the teacher's one solver step in training timesteps (of 1000; T2V-Turbo ``topk``: v1
            20, v2 5, i.e. one step of the grid); must be a multiple of ``1000 / N``. Flow teachers count it on
            the same 1000-step scale: ``k * N / 1000`` steps of their N-step grid.
        w_min, w_max: the range of the guidance scale ``w`` (LCM convention; T2V-Turbo 5..15).
        huber_c: ``c`` of the pseudo-Huber loss (0.001).
        guidance: the embedded ``w`` the exported student samples with by default (T2V-Turbo 7.5).
        sampling_steps: the exported student's default number of sampling steps (4).

    Returns ``cd`` (the loss) and the diagnostics ``w`` (mean guidance scale) and ``t`` (mean start time).
    """

    name = "cd"
    needs = frozenset({"teacher", "videos"})
    loss_terms = ("cd",)

    def __init__(self, weight: float = 1.0, num_ddim_timesteps: int = 50, skip: int = 20, w_min: float = 5.0,
                 w_max: float = 15.0, huber_c: float = 0.001, guidance: float = DEFAULT_GUIDANCE,
                 sampling_steps: int = 4) -> None:
        super().__init__(weight)
        spacing = 1000 / num_ddim_timesteps
        jump = skip / spacing
        if skip < 1 or abs(jump - round(jump)) > 1e-6:
            raise UserError(f"skip k = {skip} must be a positive multiple of the grid spacing 1000 / N = {spacing:g}")
        if not 0 <= w_min <= w_max:
            raise UserError(f"need 0 <= w_min <= w_max, got {w_min}, {w_max}")
        self.num_ddim_timesteps, self.skip, self.jump = int(num_ddim_timesteps), int(skip), int(round(jump))
        self.w_min, self.w_max, self.huber_c = float(w_min), float(w_max), float(huber_c)
        self.guidance, self.sampling_steps = float(guidance), int(sampling_steps)

    def prepare_student(self, student: Backbone) -> None:
        """Give the student its trainable guidance embedding (if it has none) and mark it as a consistency
        student on this grid, so its exports sample with the consistency sampler."""
        if not student.has_guidance_embedding:
            student.enable_guidance_embedding()
        student.guidance_proj.requires_grad_(True)
        set_consistency_sampling(student, self.guidance, self.num_ddim_timesteps, self.sampling_steps)

    def draw(self, batch_size: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """Random grid indices of the start times ``[B]`` (long) and guidance scales ``w`` ``[B]``."""
        n = torch.randint(0, self.num_ddim_timesteps, (batch_size,), device=device)
        w = torch.rand(batch_size, device=device) * (self.w_max - self.w_min) + self.w_min
        return n, w

    def forward(self, batch: dict, models: Models) -> dict[str, Tensor]:
        clips = encode_videos(batch, models)
        n, w = self.draw(clips.x0.shape[0], clips.x0.device)
        return self.loss(clips, n, torch.randn_like(clips.x0), w, models)

    def loss(self, clips: VideoBatch, n: Tensor, noise: Tensor, w: Tensor, models: Models) -> dict[str, Tensor]:
        """The CD loss for given draws: start indices ``n`` ``[B]``, noise like ``clips.x0``, scales ``w`` ``[B]``."""
        teacher, student = models.teacher, models.student
        schedule = teacher.schedule
        grid = consistency_grid(schedule, self.num_ddim_timesteps).to(clips.x0.device)
        t = grid[n]
        t_prev = grid[(n + self.jump).clamp(max=self.num_ddim_timesteps)]
        x_t = schedule.add_noise(clips.x0, noise, t)
        with torch.no_grad():
            # LCM convention cond + w (cond - uncond) = the standard CFG scale 1 + w, one batched forward
            raw = teacher.predict(x_t, t, clips.text, clips.uncond, cfg=1.0 + w)
            x_prev = schedule.step(raw.float(), x_t, t, t_prev)  # DDIM eta 0 / Euler, the teacher's own clipping
            target = consistency_output(schedule, models.target_raw(x_prev, t_prev, clips.text, w), x_prev, t_prev)
        pred = consistency_output(student.schedule, student(x_t, t, clips.text, w), x_t, t)
        models.cache["consistency"] = ConsistencyPrediction(x0=pred, t=t, w=w)
        return {"cd": pseudo_huber(pred, target, self.huber_c), "w": w.mean().detach(), "t": t.float().mean()}

    def extra_repr(self) -> str:
        return (f"weight={self.weight:g}, N={self.num_ddim_timesteps}, k={self.skip}, w=[{self.w_min:g}, "
                f"{self.w_max:g}], huber_c={self.huber_c:g}")
