"""What the sampling callbacks share: which backbone to sample, the fixed prompt set, and the schedule.

:class:`PeriodicSampling` runs its :meth:`~PeriodicSampling.run` every ``every_n_steps`` optimizer steps, at the
end of ``fit`` (and at its start if asked), on global rank 0 only. :meth:`~PeriodicSampling.sample` draws one
video per prompt with the model's own sampler (``vdistill sample``'s :func:`~vdistill.sampling.generate.generate`:
a distilled student along its key timesteps or with its consistency sampler, no CFG; a teacher with its own steps
and CFG), prompt ``i`` seeded ``seed + i``, with the EMA weights when an :class:`~vdistill.callbacks.ema.EMA`
callback is present, in eval mode, and without touching the training's random streams.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import torch

from vdistill.callbacks.ema import use_ema
from vdistill.callbacks.target import backbone_of
from vdistill.data.prompts import load_prompts
from vdistill.errors import UserError
from vdistill.sampling.generate import Generated, generate
from vdistill.world.captions import COLOURS, MOTIONS, SHAPES

#: 12 toy captions in which every colour appears 3 times, every shape 4 times and every motion 3 times
#: (prompt i: colour i mod 4, shape i mod 3, motion i div 3): a cheap but balanced evaluation set.
SMALL_TOY_PROMPTS: tuple[str, ...] = tuple(
    f"a {list(COLOURS)[i % 4]} {SHAPES[i % 3]} moving {MOTIONS[i // 3]}" for i in range(12))


def resolve_prompts(prompts: Sequence[str] | str | None, repeat: int = 1) -> list[str]:
    """The prompt list: ``None`` -> :data:`SMALL_TOY_PROMPTS`; ``"toy"`` or a text file -> ``load_prompts``; a list
    as given. Each prompt repeated ``repeat`` times in a row (repeats get their own seeds)."""
    if repeat < 1:
        raise UserError(f"repeat must be >= 1, got {repeat}")
    if isinstance(prompts, str):
        return load_prompts(prompts, repeat=repeat)
    base = list(SMALL_TOY_PROMPTS if prompts is None else prompts)
    if not base or not all(isinstance(p, str) for p in base):
        raise UserError(f"prompts must be a non-empty list of strings, 'toy' or a prompt file; got {prompts!r}")
    return [p for p in base for _ in range(repeat)]


class PeriodicSampling(L.Callback, ABC):
    """Base of the callbacks that sample the model on a fixed prompt set during ``fit``.

    Args:
        every_n_steps: run every this many optimizer steps (``trainer.global_step``).
        prompts: ``None`` (12 balanced toy captions, :data:`SMALL_TOY_PROMPTS`), ``"toy"`` (all 48), a prompt
            file (one a line) or a list of prompts.
        repeat: videos per prompt (each with its own seed).
        seed: prompt ``i`` uses noise seed ``seed + i``: the same noise at every run.
        steps: sampling steps; ``None``: the model's own (a student: its key-timestep count or its consistency
            sampler's default).
        guidance: embedded guidance scale of a consistency student (``None``: its own).
        batch_size: videos per sampling batch.
        attr: the module's backbone to sample (``None``: ``student``, else ``backbone``).
        at_start: also run when training starts (the step-0 baseline, or the resumed step).
        at_end: also run when training ends, unless the last step was just sampled.
    """

    def __init__(self, every_n_steps: int, prompts: Sequence[str] | str | None = None, repeat: int = 1,
                 seed: int = 0, steps: int | None = None, guidance: float | None = None, batch_size: int = 16,
                 attr: str | None = None, at_start: bool = False, at_end: bool = True) -> None:
        if every_n_steps < 1:
            raise UserError(f"{type(self).__name__}: every_n_steps must be >= 1, got {every_n_steps}")
        if steps is not None and steps < 1:
            raise UserError(f"{type(self).__name__}: steps must be >= 1 or null (the model's own), got {steps}")
        if batch_size < 1:
            raise UserError(f"{type(self).__name__}: batch_size must be >= 1, got {batch_size}")
        self.every_n_steps, self.seed, self.steps, self.guidance = every_n_steps, seed, steps, guidance
        self.batch_size, self.attr, self.at_start, self.at_end = batch_size, attr, at_start, at_end
        self.prompts = resolve_prompts(prompts, repeat)
        self.out_root: Path | None = None
        self._last_step: int | None = None

    @abstractmethod
    def run(self, trainer: L.Trainer, pl_module: L.LightningModule, step: int) -> dict[str, float] | None:
        """Sample and record at optimizer step ``step`` (called on global rank 0 only); the metrics it returns go to
        the loggers and, on every rank, to ``trainer.callback_metrics``."""

    # -- schedule ----------------------------------------------------------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        backbone_of(pl_module, self.attr)  # a wrong attr fails before the first step, not at step N

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # trainer.log_dir broadcasts from rank 0: every rank must ask, so it is asked here, not in run()
        self.out_root = Path(trainer.log_dir or trainer.default_root_dir)
        self._last_step = None
        if self.at_start:
            self._maybe_run(trainer, pl_module)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        if trainer.global_step > 0 and trainer.global_step % self.every_n_steps == 0:
            self._maybe_run(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.at_end:
            self._maybe_run(trainer, pl_module)

    def _maybe_run(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        step = trainer.global_step
        if step == self._last_step:  # gradient accumulation: several batches end on the same step
            return
        self._last_step = step
        metrics = self.run(trainer, pl_module, step) if trainer.is_global_zero else None
        # every rank reaches this step: share rank 0's numbers, so a ModelCheckpoint monitoring them works on all
        metrics = trainer.strategy.broadcast(metrics, src=0)
        if metrics:
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=step)
            trainer.callback_metrics.update({k: torch.tensor(v) for k, v in metrics.items()})

    def step_dir(self, kind: str, step: int) -> Path:
        """``<log_dir>/<kind>/step_XXXXXX``: the run folder of the trainer's first logger (or its root)."""
        return (self.out_root or Path(".")) / kind / f"step_{step:06d}"

    # -- sampling ----------------------------------------------------------------------------------------
    def sample(self, trainer: L.Trainer, pl_module: L.LightningModule) -> Generated:
        """One video per prompt, ``videos`` ``[N, T, 3, H, W]`` in [0, 1] on the CPU (see the module docstring)."""

        _, model = backbone_of(pl_module, self.attr)
        device = next(model.denoiser.parameters()).device
        modes = {m: m.training for m in model.modules()}  # the frozen parts are shared with the teacher
        forked = [device] if device.type == "cuda" else []
        try:
            with use_ema(trainer, pl_module), torch.random.fork_rng(devices=forked):
                torch.manual_seed(self.seed)  # anything unseeded in sampling or scoring: same at every run
                model.eval()
                return generate(model, self.prompts, steps=self.steps, guidance=self.guidance, seed=self.seed,
                                batch_size=self.batch_size, progress=False)
        finally:
            for m, mode in modes.items():
                m.training = mode
