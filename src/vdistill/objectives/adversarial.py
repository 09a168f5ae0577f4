"""Adversarial alignment (AccVideo, arXiv 2503.19462, Sec. 4.3, Eqs. 7-8), as ONE loss with ONE backward.

Real = the teacher's key latents ``x_k`` at ``t_k`` (``k >= 1``, no extra noising); fake = the student's one-step
output from the previous key point, ``step(student(x_{k-1}, t_{k-1}), x_{k-1}, t_{k-1} -> t_k)``. Non-saturating GAN
loss in softplus form: ``L_D = softplus(-D(real)) + softplus(D(fake))`` and ``L_G = softplus(-D(fake))``.

Why one backward: DeepSpeed takes one optimizer and FSDP breaks manual optimization, so the textbook alternating
update (a D step on ``L_D`` with the fake detached, then a G step on ``L_traj + lambda L_G`` with D frozen) is
written as a single loss ``L_traj + lambda * L_G + L_D`` in which each term reaches only its own parameters:

* ``L_G`` runs the heads with DETACHED parameters on features that keep their graph to the fake (through the
  frozen teacher): it reaches the student only;
* ``L_D`` runs the heads on DETACHED features of the fake (and of the real and queued latents): heads only.

At equal parameters the gradients are exactly those of the alternating update (``tests/objectives``). The
difference from alternating is only in time: both updates use the parameters of the same step.

Fakes of past steps are kept in a FIFO queue per key timestep (the paper: the student is never unrolled); the
heads also train on them. The queue is module state saved with checkpoints (:class:`FakeQueue`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vdistill.backbones.base import TextCond, cat_text
from vdistill.errors import UserError
from vdistill.objectives.base import Models, Objective
from vdistill.objectives.trajectory import key_point_predictions

FAKE_SOURCES = ("teacher_keys", "rollout")


class FakeQueue(nn.Module):
    """FIFO of past fakes per key timestep (newest first, at most ``size`` samples each) with their text.

    Kept as ``get_extra_state`` rather than buffers: it is saved in (and restored from) checkpoints like a buffer,
    but DDP does not broadcast rank 0's queue over the other ranks' every step, and its shapes are set on first use.
    Under DDP each rank keeps its own queue; a checkpoint holds rank 0's.
    """

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = int(size)
        self.entries: dict[int, tuple[Tensor, TextCond]] = {}

    def __len__(self) -> int:
        return len(self.entries)

    def get(self, j: int) -> tuple[Tensor, TextCond] | None:
        """Latents ``[n, C, T, H, W]`` and text (``n <= size``) queued for key timestep ``j``; None when empty."""
        return self.entries.get(j)

    @torch.no_grad()
    def push(self, j: int, latents: Tensor, text: TextCond) -> None:
        """Queue a batch of fakes ``[B, C, T, H, W]`` (stored detached) for key timestep ``j``."""
        if self.size <= 0:
            return
        latents, text = latents.detach(), {k: v.detach() for k, v in text.items()}
        old = self.entries.get(j)
        if old is not None:
            latents = torch.cat([latents, old[0].to(latents)])
            text = cat_text(text, {k: v.to(text[k]) for k, v in old[1].items()})
        self.entries[j] = (latents[: self.size].clone(), {k: v[: self.size].clone() for k, v in text.items()})

    def get_extra_state(self) -> dict:
        state: dict = {"size": self.size}
        for j, (latents, text) in self.entries.items():
            state[f"{j}/latents"] = latents
            state.update({f"{j}/text/{k}": v for k, v in text.items()})
        return state

    def set_extra_state(self, state: dict) -> None:
        self.entries = {}
        for key, value in state.items():
            if key.endswith("/latents"):
                j = key.split("/")[0]
                text = {k[len(j) + 6:]: v for k, v in state.items() if k.startswith(f"{j}/text/")}
                self.entries[int(j)] = (value, text)


class AdversarialAlignment(Objective):
    """AccVideo's adversarial alignment with the noise-aware :class:`~vdistill.roles.discriminator.Discriminator`.

    Args:
        weight: lambda_adv, the weight of the generator term ``L_G`` (the paper's 0.1).
        d_weight: weight of the discriminator term ``L_D`` (1 keeps the heads' gradient that of the alternating
            update; their learning rate is the optimizer group's).
        queue_size: past fakes kept per key timestep (0: no queue).
        fakes: ``teacher_keys`` (AccVideo): the fake at key point ``k`` is the student's one step from the TEACHER's
            key latent ``x_{k-1}`` of the same trajectory; ``rollout`` (ours, not in the paper): the student's own
            m-step chain from FRESH noise (detached between steps), so the fake at the clean key point is a sample
            as users get it, from noise the trajectory set does not hold. Why: on a small trajectory set the student
            reproduces its training trajectories almost exactly, and the paired fakes of ``teacher_keys`` give the
            heads nothing to see (measured in the toy world, docs/results/accvideo_toy.md). Costs one student
            forward per key point.

    Returns ``adv_g`` and ``adv_d`` (mean over key timesteps) and the diagnostics ``real_acc`` / ``fake_acc``
    (fraction of real / current fake samples the heads classify right) and ``real_logit`` / ``fake_logit``.
    """

    name = "adv"
    needs = frozenset({"trajectory", "discriminator"})
    loss_terms = ("adv_g", "adv_d")

    def __init__(self, weight: float = 0.1, d_weight: float = 1.0, queue_size: int = 4,
                 fakes: str = "teacher_keys") -> None:
        super().__init__(weight)
        if fakes not in FAKE_SOURCES:
            raise UserError(f"AdversarialAlignment: fakes={fakes!r} is not one of {list(FAKE_SOURCES)}")
        self.fakes = fakes
        self.d_weight = float(d_weight)
        self.queue = FakeQueue(queue_size)

    def total(self, out: dict[str, Tensor]) -> Tensor:
        return self.weight * out["adv_g"] + self.d_weight * out["adv_d"]

    def forward(self, batch: dict, models: Models) -> dict[str, Tensor]:
        disc = models.discriminator
        kp = key_point_predictions(batch, models)
        b, pairs = batch["latents"].shape[0], kp.pairs
        real = kp.x_next.unflatten(0, (b, pairs))
        times = kp.t_next.unflatten(0, (b, pairs))
        text = batch["text"]
        if self.fakes == "rollout":
            fake = self.rollout(real, kp.t.unflatten(0, (b, pairs)), times, text, models)
        else:
            fake = models.student.schedule.step(kp.raw.float(), kp.x, kp.t, kp.t_next).unflatten(0, (b, pairs))
        groups: dict[int, list[int]] = {}  # key timesteps read from the same block share one teacher forward
        for j in range(pairs):
            groups.setdefault(disc.blocks[j], []).append(j)

        g_terms, d_terms, stats = [], [], {"real_acc": [], "fake_acc": [], "real_logit": [], "fake_logit": []}
        for block, js in groups.items():
            # fakes WITH their graph (through the frozen teacher) for L_G; reals and queued fakes need none
            fake_feats = disc.features(torch.cat([fake[:, j] for j in js]), torch.cat([times[:, j] for j in js]),
                                       cat_text(*[text] * len(js)), block).split(b)
            others, sizes = [], []
            for j in js:
                queued = self.queue.get(j)
                n = 0 if queued is None else queued[0].shape[0]
                lat = real[:, j] if queued is None else torch.cat([real[:, j], queued[0].to(real)])
                txt = text if queued is None else cat_text(text, {k: v.to(text[k]) for k, v in queued[1].items()})
                others.append((lat, times[:1, j].expand(b + n), txt))
                sizes.append(b + n)
            with torch.no_grad():
                other_feats = disc.features(torch.cat([o[0] for o in others]), torch.cat([o[1] for o in others]),
                                            cat_text(*[o[2] for o in others]), block).split(sizes)
            for j, ff, of in zip(js, fake_feats, other_feats):
                logit_g = disc.logits(ff, j, detach_params=True)
                logit_fake = disc.logits(ff.detach(), j)
                logit_other = disc.logits(of, j)
                logit_real, logit_queued = logit_other[:b], logit_other[b:]
                g_terms.append(F.softplus(-logit_g).mean())
                d_terms.append(F.softplus(-logit_real).mean()
                               + F.softplus(torch.cat([logit_fake, logit_queued])).mean())
                stats["real_acc"].append((logit_real > 0).float().mean())
                stats["fake_acc"].append((logit_fake < 0).float().mean())
                stats["real_logit"].append(logit_real.mean())
                stats["fake_logit"].append(logit_fake.mean())
        for j in range(pairs):  # after every head has seen this step's queue, as the alternating D step does
            self.queue.push(j, fake[:, j], text)
        out = {"adv_g": torch.stack(g_terms).mean(), "adv_d": torch.stack(d_terms).mean()}
        out.update({k: torch.stack(v).detach().mean() for k, v in stats.items()})
        return out

    @staticmethod
    def rollout(like: Tensor, t: Tensor, t_next: Tensor, text: TextCond, models: Models) -> Tensor:
        """Fakes shaped like ``like`` ``[B, pairs, ...]`` along the student's own chain from fresh standard-normal
        noise (as the sampler starts): pair ``j`` steps from pair ``j - 1``'s output, detached (the student is
        trained one step at a time)."""
        x = torch.randn_like(like[:, 0])
        cols = []
        for j in range(like.shape[1]):
            raw = models.student_raw(x, t[:, j], text)
            cols.append(models.student.schedule.step(raw.float(), x, t[:, j], t_next[:, j]))
            x = cols[-1].detach()
        return torch.stack(cols, dim=1)

    def extra_repr(self) -> str:
        return (f"weight={self.weight:g}, d_weight={self.d_weight:g}, queue_size={self.queue.size}, "
                f"fakes={self.fakes}")

