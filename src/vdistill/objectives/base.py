"""What every distillation objective shares: named loss terms from tensors and models, and declared needs.

An :class:`Objective` sees one training batch and a :class:`Models` bundle and returns named tensors: its loss
terms (unweighted, listed in ``loss_terms``) and any diagnostics (logged, never optimised). It knows nothing of
the Trainer, YAML or files; the distillation module sums :meth:`Objective.total` over its objectives and takes
ONE backward, so each term must reach only the parameters it is meant to train (see the adversarial objective).

``needs`` names what an objective cannot work without, checked when the distillation module is built or set up:

* ``trajectory``: batches of teacher key points (:class:`~vdistill.data.trajectories.TrajectoryData`),
* ``teacher``: the frozen teacher (consistency distillation),
* ``videos``: batches of real clips and their prompts, as pixels (``VideoClips``, ``ToyVideos``) or as the
  teacher's latents and text conditioning from a ``vdistill preprocess`` cache (``LatentClips``); consistency
  distillation,
* ``discriminator``: a :class:`~vdistill.roles.discriminator.Discriminator` (adversarial alignment),
* ``critics``: reward models (reward feedback).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from vdistill.backbones.base import Backbone, TextCond
from vdistill.errors import UserError

#: what each need means to a user, for error messages
NEED_HINTS: dict[str, str] = {
    "trajectory": "batches of teacher key points (data: TrajectoryData over a synthesised trajectory set)",
    "teacher": "the frozen teacher (model.teacher)",
    "videos": "batches of real videos and prompts (data: a video datamodule such as VideoClips or ToyVideos, or "
              "LatentClips over a vdistill preprocess cache)",
    "discriminator": "a discriminator (model.discriminator, e.g. class_path: Discriminator)",
    "critics": "reward critics (model.critics)",
}


@dataclass
class Models:
    """The models one training step works with, plus a per-step cache that objectives share (e.g. the student's
    predictions at the key points, computed once for the trajectory and the adversarial objective).

    Build a fresh one per step: the cache holds tensors of that step's autograd graph.

    Args:
        student: the trained backbone.
        teacher: the frozen teacher.
        discriminator: the discriminator (bound to the teacher), if any.
        critics: reward models by name, if any.
        guidance: embedded guidance scale fed to students with a guidance embedding (None: none).
        target: an EMA of the student's trainable weights (:class:`~vdistill.roles.ema.EMAWeights`), the
            consistency target network; None: the online student is its own target.
    """

    student: Backbone
    teacher: Backbone | None = None
    discriminator: nn.Module | None = None
    critics: dict[str, nn.Module] | None = None
    guidance: float | None = None
    target: nn.Module | None = None
    cache: dict[str, Any] = field(default_factory=dict)

    def student_raw(self, latents: Tensor, t: Tensor, text: TextCond) -> Tensor:
        """The student's raw prediction for latents ``[N, C, T, H, W]`` at schedule times ``t`` ``[N]``."""
        g = None
        if self.guidance is not None and self.student.has_guidance_embedding:
            g = torch.full((latents.shape[0],), float(self.guidance), device=latents.device)
        return self.student(latents, t, text, g)

    @torch.no_grad()
    def target_raw(self, latents: Tensor, t: Tensor, text: TextCond, guidance: Tensor | None = None) -> Tensor:
        """The target network's raw prediction (no gradient): the student run with its EMA weights when there
        is an EMA target, else the online student itself (T2V-Turbo's code)."""
        if self.target is None:
            return self.student(latents, t, text, guidance)
        return self.target(self.student, latents, t, text, guidance)

    def available(self) -> set[str]:
        """The model-side needs this bundle meets (``trajectory`` is a property of the data, not of the models)."""
        have = {"teacher"} if self.teacher is not None else set()
        if self.discriminator is not None:
            have.add("discriminator")
        if self.critics:
            have.add("critics")
        return have


class Objective(nn.Module, ABC):
    """Base class of distillation objectives.

    Args:
        weight: multiplies the objective's loss terms in the total (subclasses may weight terms differently).

    Subclasses set ``name`` (the log prefix of diagnostics), ``needs`` and ``loss_terms``, and implement
    :meth:`forward`.
    """

    name: str = "objective"
    needs: frozenset[str] = frozenset()
    loss_terms: tuple[str, ...] = ()

    def __init__(self, weight: float = 1.0) -> None:
        super().__init__()
        self.weight = float(weight)

    @abstractmethod
    def forward(self, batch: dict, models: Models) -> dict[str, Tensor]:
        """Named loss terms (unweighted scalars, the keys of ``loss_terms``) and detached diagnostics."""

    def prepare_student(self, student: Backbone) -> None:
        """Adapt the freshly made student to this objective (e.g. add a guidance embedding); default: nothing."""

    def total(self, out: dict[str, Tensor]) -> Tensor:
        """This objective's contribution to the one loss that is back-propagated."""
        return self.weight * sum(out[k] for k in self.loss_terms)

    def extra_repr(self) -> str:
        return f"weight={self.weight:g}"


def check_needs(objectives: Iterable[Objective], available: set[str], where: str = "") -> None:
    """Raise a :class:`UserError` naming each objective whose needs are not in ``available`` and what is missing."""
    problems = []
    for obj in objectives:
        missing = sorted(set(obj.needs) - available)
        if missing:
            what = "; ".join(NEED_HINTS.get(m, m) for m in missing)
            problems.append(f"objective {type(obj).__name__} needs {', '.join(missing)} ({what})")
    if problems:
        raise UserError("; ".join(problems) + (f" {where}" if where else ""))
