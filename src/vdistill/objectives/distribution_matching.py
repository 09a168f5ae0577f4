"""Distribution matching distillation (DMD2: Yin et al. 2024, "Improved Distribution Matching Distillation for Fast
Image Synthesis", arXiv 2405.14867; official code ``tianweiy/DMD2``, ``main/sd_guidance.py``).

Per training step, with ``x0`` the student's sample (:func:`rollout`: its own m-step chain from noise, DMD2's
backward simulation) and ``c`` the prompt:

1. **Generator loss** (``compute_distribution_matching_loss``): ``t`` uniform in ``[min_t, max_t]`` of the
   schedule (DMD2: 0.02..0.98 of 1000 DDPM steps; flow times get the schedule's shift, as FastVideo's DMD),
   ``x_t = alpha_t x0 + sigma_t eps``; the real x0-prediction is the frozen teacher's with CFG at ``real_guidance``,
   the fake one the fake score network's (no CFG); ``p_real = x0 - x0_real``, ``p_fake = x0 - x0_fake``,
   ``grad = (p_real - p_fake) / mean(|p_real|)`` (per sample, DMD's normaliser) and
   ``L_dmd = 0.5 * mse(x0, sg(x0 - grad))``, whose gradient w.r.t. ``x0`` is ``grad / numel``.
2. **Fake score loss** (``compute_loss_fake``): the teacher's denoising loss, in its own parameterisation, on the
   student's samples (detached) at the schedule's training times.
3. **GAN term** (optional, ``gan_weight > 0``; ``compute_cls_logits``): a classification head on a feature block
   of the fake score network; real = data (a trajectory's last key point, or the clips of a video batch), fake =
   ``x0``, both noised at a random ``t`` in the range above; ``gan_d = softplus(-D(real)) + softplus(D(fake))``
   trains network and head, ``gan_g = softplus(-D(x0))`` the student.

All of it is ONE loss with ONE backward (:mod:`vdistill.objectives.base`): ``L_dmd`` reaches the student only (both
scores run without gradient), the fake losses see ``x0`` detached, and ``gan_g`` runs network and head on detached
parameters. **Two time-scale update rule** (DMD2's ``dfake_gen_update_ratio``, paper: 5): the student is updated
on global steps ``0, k, 2k, ...`` only; on the others the distillation module calls :meth:`side_losses` (the fake
score's terms on a sample drawn without gradient), runs no other objective, and holds every optimizer group but
the fake score's still in that step, so AdamW leaves the student's weights and state untouched, under DeepSpeed
ZeRO too (:class:`~vdistill.modules.distill.Distillation`, :class:`~vdistill.training.optim.HoldingAdamW`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from vdistill.backbones.base import Backbone, TextCond, cat_text
from vdistill.diffusion.schedules import FlowSchedule, NoiseSchedule
from vdistill.errors import UserError
from vdistill.objectives.base import Models, Objective
from vdistill.objectives.consistency import encode_videos
from vdistill.roles.fake_score import FakeScore, FakeScoreConfig


def dmd_gradient(x0: Tensor, real_x0: Tensor, fake_x0: Tensor) -> Tensor:
    """DMD2's normalised score difference ``(p_real - p_fake) / mean|p_real|`` for samples ``x0`` and the real / fake
    x0-predictions at their noised versions, all ``[B, ...]``; the mean is per sample; NaN / Inf become finite."""
    p_real, p_fake = x0 - real_x0, x0 - fake_x0
    norm = p_real.abs().flatten(1).mean(1).reshape(-1, *([1] * (x0.ndim - 1)))
    return torch.nan_to_num((p_real - p_fake) / norm)


def dmd_loss(x0: Tensor, grad: Tensor) -> Tensor:
    """The stop-gradient MSE ``0.5 * mse(x0, sg(x0 - grad))``: its gradient w.r.t. ``x0`` is ``grad / x0.numel()``."""
    return 0.5 * F.mse_loss(x0.float(), (x0 - grad).detach().float())


def rollout(noise: Tensor, times: tuple[float, ...], step: int, text: TextCond, models: Models) -> Tensor:
    """Backward simulation: the student's x0-prediction at key step ``step`` of its own chain from ``noise``
    ``[B, C, T, H, W]`` along its key timesteps ``times`` (the sampler's deterministic DDIM / Euler steps, without
    gradient), WITH gradient at that last forward only."""
    schedule, b, dev = models.student.schedule, noise.shape[0], noise.device
    x = noise.float()
    with torch.no_grad():
        for j in range(step):
            t, t_next = torch.full((b,), times[j], device=dev), torch.full((b,), times[j + 1], device=dev)
            x = schedule.step(models.student_raw(x, t, text).float(), x, t, t_next)
    t = torch.full((b,), times[step], device=dev)
    return schedule.to_x0(models.student_raw(x, t, text).float(), x, t)


@dataclass
class DMDBatch:
    """What a step reads from its batch: the text (and empty-prompt) conditioning, the latent shape of one sample
    ``(B, C, T, H, W)`` and the real clean latents for the GAN term (None when the batch has none)."""

    text: TextCond
    uncond: TextCond
    shape: tuple[int, ...]
    real: Tensor | None


class DistributionMatching(Objective):
    """DMD2 with its fake score network, two time-scale updates, backward simulation and optional GAN term.

    Args:
        weight: weight of ``L_dmd`` (DMD2: 1).
        real_guidance: CFG scale of the real (teacher) score (DMD2: 1.75 for SD1.5, 8 for SDXL); None: the
            teacher's own sampling scale.
        min_t, max_t: the range of the noise level of ``L_dmd`` and the GAN term, as fractions of the schedule
            (DMD2: 0.02, 0.98).
        fake_updates: k, the fake score's updates per student update (DMD2 ``dfake_gen_update_ratio``: 5 in the paper
            and its SDXL / ImageNet recipes; 1: both every step).
        fake_score: full copy or LoRA, and the optimizer settings of its parameter group (:class:`FakeScoreConfig`).
        fake_weight: weight of the fake score's denoising loss.
        gan_weight: weight of ``gan_g`` (DMD2 SDXL ``gen_cls_loss_weight``: 5e-3); 0: no GAN term, no head.
        gan_d_weight: weight of ``gan_d`` (DMD2 ``guidance_cls_loss_weight``: 1e-2).
        gan_block: the fake score's feature block the head reads (negative counts from the end); None: the middle
            block, the nearest to DMD2's bottleneck.
        gan_hidden: channels of the head.
        steps: train an ``steps``-step student on the schedule's own grid: with video clips (which carry no key
            timesteps), or on a trajectory set whose key points nothing else reads (no trajectory objective, no
            discriminator: e.g. a 1- or 4-step student from a 2-step set); None: the trajectory data's key
            timesteps.

    Returns ``dmd``, ``fake_score`` (and ``gan_g``, ``gan_d``) and the diagnostics ``t`` (mean noise level of
    ``L_dmd``), ``step`` (the student step trained), ``real_acc`` / ``fake_acc`` (GAN head accuracy).
    """

    name = "dmd"
    needs = frozenset({"teacher"})
    loss_terms = ("dmd", "fake_score", "gan_g", "gan_d")

    def __init__(self, weight: float = 1.0, real_guidance: float | None = None, min_t: float = 0.02,
                 max_t: float = 0.98, fake_updates: int = 5, fake_score: FakeScoreConfig = FakeScoreConfig(),
                 fake_weight: float = 1.0, gan_weight: float = 0.0, gan_d_weight: float = 1e-2,
                 gan_block: int | None = None, gan_hidden: int = 64, steps: int | None = None) -> None:
        super().__init__(weight)
        if not 0.0 <= min_t < max_t <= 1.0:
            raise UserError(f"DistributionMatching needs 0 <= min_t < max_t <= 1, got min_t={min_t}, max_t={max_t}")
        if int(fake_updates) < 1:
            raise UserError(f"DistributionMatching: fake_updates must be >= 1, got {fake_updates}")
        if fake_score.mode not in ("full", "lora"):
            raise UserError(f"fake_score.mode {fake_score.mode!r} is not known; choose 'full' or 'lora'")
        if steps is not None and int(steps) < 1:
            raise UserError(f"DistributionMatching: steps must be >= 1, got {steps}")
        self.real_guidance = None if real_guidance is None else float(real_guidance)
        self.min_t, self.max_t, self.fake_updates = float(min_t), float(max_t), int(fake_updates)
        self.config, self.fake_weight = fake_score, float(fake_weight)
        self.gan_weight, self.gan_d_weight = float(gan_weight), float(gan_d_weight)
        self.gan_block, self.gan_hidden = gan_block, int(gan_hidden)
        self.steps = None if steps is None else int(steps)
        self.fake_score: FakeScore | None = None

    # -- wiring (called by the distillation module) -------------------------------------------------------
    def bind_teacher(self, teacher: Backbone) -> None:
        """Build the fake score network from the frozen ``teacher`` (once)."""
        if self.fake_score is None:
            block = None
            if self.gan_weight > 0:
                block = len(teacher.feature_blocks()) // 2 if self.gan_block is None else self.gan_block
            self.fake_score = FakeScore(teacher, self.config, block, self.gan_hidden)

    def prepare_student(self, student: Backbone) -> None:
        if self.steps is not None:
            student.set_key_timesteps(student.schedule.sampling_timesteps(self.steps).tolist())

    def trains_student(self, step: int) -> bool:
        """Whether global step ``step`` updates the student (DMD2: ``step % dfake_gen_update_ratio == 0``)."""
        return step % self.fake_updates == 0

    def check_strategy(self, name: str, sharded: bool) -> None:
        """Refuse the GAN term where parameters are sharded: its generator half runs the fake score on detached
        copies of its parameters (``torch.func.functional_call``), which FSDP's flat-parameter views refuse."""
        if sharded and self.gan_weight > 0:
            raise UserError(f"DistributionMatching's GAN term (gan_weight={self.gan_weight:g}) cannot run under "
                            f"{name}, which shards parameters: use ddp_find_unused_parameters_true or "
                            "deepspeed_zero2, or gan_weight: 0")

    def param_groups(self, lr: float, betas: tuple[float, float], weight_decay: float) -> list[dict]:
        """The fake score's AdamW parameter group (its own settings, else the module's)."""
        c = self.config
        return [{"params": self._fake().trainable(), "name": "fake_score", "lr": lr if c.lr is None else c.lr,
                 "betas": tuple(betas if c.betas is None else c.betas),
                 "weight_decay": weight_decay if c.weight_decay is None else c.weight_decay}]

    def total(self, out: dict[str, Tensor]) -> Tensor:
        weights = {"dmd": self.weight, "fake_score": self.fake_weight, "gan_g": self.gan_weight,
                   "gan_d": self.gan_d_weight}
        return sum(weights[k] * out[k] for k in self.loss_terms if k in out)

    # -- the two kinds of step ------------------------------------------------------------------------------
    def forward(self, batch: dict, models: Models) -> dict[str, Tensor]:
        """A student step: ``dmd`` (and ``gan_g``) for the student, ``fake_score`` (and ``gan_d``) for the fake."""
        data = self.read_batch(batch, models)
        x0, step = self.sample(data, models)
        out = self.distribution_matching(x0, data.text, data.uncond, models.teacher, self._fake())
        out.update(self.fake_losses(x0.detach(), data))
        if self.gan_weight > 0:
            t = self.draw_times(models.teacher.schedule, x0.shape[0], x0.device)
            noisy = models.teacher.schedule.add_noise(x0, torch.randn_like(x0), t)
            out["gan_g"] = F.softplus(-self._fake().logits(noisy, t, data.text, detach_params=True)).mean()
        out["step"] = torch.tensor(float(step))
        return out

    def side_losses(self, batch: dict, models: Models) -> dict[str, Tensor]:
        """A fake-score-only step of the TTUR: its losses on a student sample drawn without gradient."""
        data = self.read_batch(batch, models)
        with torch.no_grad():
            x0, step = self.sample(data, models)
        return {**self.fake_losses(x0, data), "step": torch.tensor(float(step))}

    # -- the parts ----------------------------------------------------------------------------------------
    def read_batch(self, batch: dict, models: Models) -> DMDBatch:
        """Text, empty prompt, sample shape and real clean latents of a trajectory batch (``latents``
        ``[B, K, C, T, H, W]``, ``timesteps``, ``text``: the last key point is the real sample) or a video batch
        (pixels or a latent cache, through :func:`~vdistill.objectives.consistency.encode_videos`)."""
        if "timesteps" in batch:
            latents = batch["latents"].float()
            text, real = batch["text"], latents[:, -1]
            with torch.no_grad():
                uncond = batch["uncond"] if "uncond" in batch else models.teacher.encode_text([""])
            return DMDBatch(text, uncond, tuple(latents[:, 0].shape), real)
        clips = encode_videos(batch, models)
        return DMDBatch(clips.text, clips.uncond, tuple(clips.x0.shape), clips.x0)

    def sample(self, data: DMDBatch, models: Models) -> tuple[Tensor, int]:
        """The student's sample ``x0`` ``[B, C, T, H, W]`` (with gradient when enabled) at a key step drawn uniformly
        (one per batch, as DMD2's backward simulation), and that step's index."""
        times = models.student.key_timesteps
        if times is None:
            raise UserError("DistributionMatching needs the student's key timesteps: train on TrajectoryData or set "
                            "the objective's steps (e.g. steps: 2)")
        device = next(models.student.denoiser.parameters()).device
        step = int(torch.randint(len(times) - 1, ()))
        noise = torch.randn(data.shape, device=device)
        return rollout(noise, tuple(times), step, data.text, models), step

    def draw_times(self, schedule: NoiseSchedule, batch: int, device: torch.device) -> Tensor:
        """Noise levels ``[B]`` uniform in ``[min_t, max_t]`` of the schedule (DDPM: integer timesteps, as DMD2's
        ``randint(min_step, max_step + 1)``; flow: shifted by the schedule's timestep shift)."""
        if isinstance(schedule, FlowSchedule):
            u = torch.rand(batch, device=device) * (self.max_t - self.min_t) + self.min_t
            return schedule.shift_sigmas(u)
        n = schedule.num_train_timesteps
        lo, hi = int(self.min_t * n), min(int(self.max_t * n) + 1, n)
        return torch.randint(lo, hi, (batch,), device=device).float()

    def real_scale(self, teacher: Backbone) -> float:
        return float(teacher.defaults.cfg) if self.real_guidance is None else self.real_guidance

    def distribution_matching(self, x0: Tensor, text: TextCond, uncond: TextCond, teacher: Backbone,
                              fake: FakeScore, t: Tensor | None = None, noise: Tensor | None = None
                              ) -> dict[str, Tensor]:
        """``{"dmd": L_dmd, "t": mean noise level}`` for samples ``x0`` ``[B, C, T, H, W]`` (with gradient); ``t``
        ``[B]`` and ``noise`` default to fresh draws."""
        schedule = teacher.schedule
        with torch.no_grad():
            t = self.draw_times(schedule, x0.shape[0], x0.device) if t is None else t
            noise = torch.randn_like(x0) if noise is None else noise
            x_t = schedule.add_noise(x0.detach().float(), noise, t)
            raw_real = teacher.predict(x_t, t, text, uncond, cfg=self.real_scale(teacher))
            real_x0 = schedule.to_x0(raw_real.float(), x_t, t)
            fake_x0 = fake.net.schedule.to_x0(fake(x_t, t, text).float(), x_t, t)
            grad = dmd_gradient(x0.detach().float(), real_x0, fake_x0)
        return {"dmd": dmd_loss(x0, grad), "t": t.float().mean()}

    def fake_losses(self, x0: Tensor, data: DMDBatch) -> dict[str, Tensor]:
        """``fake_score``: the denoising loss of the fake score network on detached samples ``x0`` at the schedule's
        training times; ``gan_d`` (with a head): the classifier's loss on real vs these samples."""
        fake = self._fake()
        schedule = fake.net.schedule
        t = schedule.sample_training_timesteps(x0.shape[0]).to(x0.device)
        noise = torch.randn_like(x0)
        raw = fake(schedule.add_noise(x0, noise, t), t, data.text)
        out = {"fake_score": F.mse_loss(raw.float(), schedule.from_x0_eps(x0, noise, t).float())}
        if self.gan_weight > 0:
            out.update(self.gan_d(x0, data))
        return out

    def gan_d(self, fake_x0: Tensor, data: DMDBatch) -> dict[str, Tensor]:
        """The classifier's loss on real latents vs detached fakes ``[B, C, T, H, W]``, both noised at random levels
        (one batched forward), and its accuracies."""
        if data.real is None:
            raise UserError("DistributionMatching's GAN term needs real samples: train on TrajectoryData or a video "
                            "datamodule")
        fake, b = self._fake(), fake_x0.shape[0]
        both = torch.cat([data.real.to(fake_x0), fake_x0.detach()])
        t = self.draw_times(fake.net.schedule, both.shape[0], both.device)
        noisy = fake.net.schedule.add_noise(both, torch.randn_like(both), t)
        logits = fake.logits(noisy, t, cat_text(data.text, data.text))
        real, fake_logit = logits[:b], logits[b:]
        return {"gan_d": F.softplus(-real).mean() + F.softplus(fake_logit).mean(),
                "real_acc": (real > 0).float().mean().detach(), "fake_acc": (fake_logit < 0).float().mean().detach()}

    def _fake(self) -> FakeScore:
        if self.fake_score is None:
            raise RuntimeError("DistributionMatching has no fake score network yet (call bind_teacher)")
        return self.fake_score

    def extra_repr(self) -> str:
        return (f"weight={self.weight:g}, real_guidance={self.real_guidance}, t=[{self.min_t:g}, {self.max_t:g}], "
                f"fake_updates={self.fake_updates}, fake_score={self.config.mode}, gan_weight={self.gan_weight:g}")
