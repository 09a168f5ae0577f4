"""An EMA of the student's TRAINABLE weights as a callback, checkpointed with the run (``callbacks/ema.yaml``).

Lightning's ``EMAWeightAveraging`` averages the whole LightningModule: next to a frozen teacher (and critics) that
is a second copy of models that never change. This callback averages only the trainable parameters of one
backbone (``pl_module.student``; for a LoRA student its adapters and guidance projection) with
:class:`~vdistill.roles.ema.EMAWeights`, kept in float32 whatever the training precision.

Which weights are used where (the rule):

- training steps, the module's own checkpoint weights (``state_dict``) and therefore ``vdistill sample --model
  last.ckpt`` / ``vdistill export --ckpt``: the online weights;
- validation, test and predict epochs, :class:`~vdistill.callbacks.video_samples.VideoSamples`,
  :class:`~vdistill.callbacks.evaluation.PeriodicEvaluation` and
  :class:`~vdistill.callbacks.export.ExportBackbone`: the EMA weights, swapped into the backbone for the duration
  (:func:`use_ema`) and swapped back.

The average, the update count and the settings are the callback's checkpoint state, so ``--ckpt_path last``
resumes it exactly. Not for sharded strategies (FSDP, ``ModelParallelStrategy``, DeepSpeed ZeRO-3): each rank
keeps a full copy of the trainable weights.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import lightning as L
import torch
from torch import Tensor

from vdistill.backbones.base import Backbone
from vdistill.callbacks.target import backbone_of
from vdistill.errors import UserError
from vdistill.roles.ema import EMAWeights

_SHARDED = ("FSDPStrategy", "ModelParallelStrategy")


class EMA(L.Callback):
    """EMA of the student's trainable weights (``pl_module.<attr>``), checkpointed; evaluation and export use it.

    Updated after optimizer steps: after ``n`` earlier updates the next one is ``avg <- d avg + (1 - d) theta``
    with ``d = 0`` for the first (a copy) and ``d = min(decay, (1 + n) / (10 + n))`` after it when ``warmup``
    (TensorFlow's ``ExponentialMovingAverage(num_updates=...)``; diffusers' ``EMAModel`` default, against which it
    is tested):
    early on the average spans the last ~n/9 steps, so a short toy run is not dominated by the initial (teacher)
    weights, and it reaches ``decay`` after ~9,000 updates.

    Args:
        decay: the final decay ``d``. Default 0.999 (Lightning's ``EMAWeightAveraging``): a window of ~1,000 steps
            once warmed up.
        warmup: use the warm-up above; ``False``: ``d = decay`` from the second update on.
        every_n_steps: update every this many optimizer steps.
        start_step: optimizer steps before the first update (until then the average is the initial weights; the
            first update copies the weights of that step).
        attr: the module's backbone to average (``None``: ``student``, else ``backbone``).
    """

    def __init__(self, decay: float = 0.999, warmup: bool = True, every_n_steps: int = 1, start_step: int = 0,
                 attr: str | None = None) -> None:
        if not 0.0 <= decay < 1.0:
            raise UserError(f"EMA decay must be in [0, 1), got {decay}")
        if every_n_steps < 1:
            raise UserError(f"EMA every_n_steps must be >= 1, got {every_n_steps}")
        if start_step < 0:
            raise UserError(f"EMA start_step must be >= 0, got {start_step}")
        self.decay, self.warmup, self.every_n_steps, self.start_step = float(decay), warmup, every_n_steps, start_step
        self.attr = attr
        self.num_updates = 0
        self._ema: EMAWeights | None = None
        self._model: Backbone | None = None
        self._pending: dict | None = None  # checkpoint state that arrived before the average was built
        self._last_step: int | None = None
        self._swapped = False
        self._hook_swap = False

    @property
    def state_key(self) -> str:
        return self._generate_state_key(attr=self.attr)

    def current_decay(self) -> float:
        """The decay of the next update (0 for the first: a copy)."""
        n = self.num_updates
        if n == 0:
            return 0.0
        return min(self.decay, (1 + n) / (10 + n)) if self.warmup else self.decay

    # -- building and updating --------------------------------------------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        strategy = trainer.strategy
        if type(strategy).__name__ in _SHARDED or getattr(strategy, "zero_stage_3", False):
            raise UserError(f"the EMA callback keeps a full copy of the trainable weights on every rank and cannot "
                            f"average sharded parameters ({type(strategy).__name__}); valid strategies: a single "
                            "device, DDP, DeepSpeed ZeRO-1/2 (or drop callbacks/ema.yaml)")
        self.attr, _ = backbone_of(pl_module, self.attr)

    def _ensure(self, pl_module: L.LightningModule) -> EMAWeights:
        """Build the average from the current weights (after a checkpoint's weights were restored and the module
        was moved to its device), then load any pending checkpoint state."""
        if self._ema is None:
            _, self._model = backbone_of(pl_module, self.attr)
            self._ema = EMAWeights(self._model, self.decay).float()
            if self._pending is not None:
                self._load(self._pending)
                self._pending = None
        return self._ema

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._ensure(pl_module)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._last_step = trainer.global_step  # nothing to average before the first optimizer step of this run

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        self.catch_up(trainer, pl_module)

    @torch.no_grad()
    def catch_up(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Update the average for the current optimizer step, once (idempotent: the sampling callbacks call it so
        they never see last step's average, whatever the callback order)."""
        ema = self._ensure(pl_module)
        step = trainer.global_step
        if step == self._last_step or self._last_step is None:
            return
        self._last_step = step
        if step <= self.start_step or (step - self.start_step) % self.every_n_steps:
            return
        if self._swapped:
            raise RuntimeError("EMA update while the averaged weights are swapped in")
        ema.decay = self.current_decay()
        ema.update(self._model)
        self.num_updates += 1

    # -- using the average -------------------------------------------------------------------------------
    @torch.no_grad()
    def _swap(self) -> None:
        params = dict(self._model.named_parameters())
        for name, avg in self._ema.averaged().items():
            p = params[name]
            online = p.detach().clone()
            p.copy_(avg)
            avg.copy_(online)
        self._swapped = not self._swapped

    @contextlib.contextmanager
    def averaged_weights(self, pl_module: L.LightningModule) -> Iterator[Backbone]:
        """The backbone with the EMA weights in place of its trainable ones (re-entrant), restored on exit."""
        self._ensure(pl_module)
        if self._swapped:
            yield self._model
            return
        self._swap()
        try:
            yield self._model
        finally:
            self._swap()

    def _hook_in(self, pl_module: L.LightningModule) -> None:
        self._ensure(pl_module)
        if not self._swapped:
            self._swap()
            self._hook_swap = True

    def _hook_out(self) -> None:
        if self._hook_swap:
            self._swap()
            self._hook_swap = False

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._hook_in(pl_module)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._hook_out()

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._hook_in(pl_module)

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._hook_out()

    def on_predict_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._hook_in(pl_module)

    def on_predict_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._hook_out()

    def averaged(self) -> dict[str, Tensor]:
        """``{trainable parameter name: EMA value}`` (float32), wherever the values live right now."""
        if self._ema is None:
            raise RuntimeError("the EMA is built when fit (or validate / test / predict) starts")
        if not self._swapped:
            return self._ema.averaged()
        params = dict(self._model.named_parameters())
        return {name: params[name].detach().float() for name in self._ema.names}

    # -- checkpoints -------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        if self._ema is None:
            return dict(self._pending or {})
        return {"decay": self.decay, "warmup": self.warmup, "num_updates": self.num_updates,
                "names": list(self._ema.names), "averaged": self.averaged()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not state_dict:
            return
        if self._ema is None:
            self._pending = state_dict
        else:
            self._load(state_dict)

    def _load(self, state: dict[str, Any]) -> None:
        names = list(state["names"])
        if names != self._ema.names:
            missing = sorted(set(self._ema.names) - set(names))
            unexpected = sorted(set(names) - set(self._ema.names))
            raise UserError(f"the checkpoint's EMA does not match this {self.attr}'s trainable parameters: missing "
                            f"{missing[:5]}, unexpected {unexpected[:5]} (was the student mode or LoRA rank changed?)")
        with torch.no_grad():
            for name, avg in self._ema.averaged().items():
                avg.copy_(state["averaged"][name])
        self.num_updates = int(state["num_updates"])

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        if not self._swapped:
            return
        # saved mid-evaluation: the module's weights are the average; the checkpoint must keep the online ones
        online = self._ema.averaged()  # while swapped, the buffers hold the online weights
        state = checkpoint["state_dict"]
        for name, value in online.items():
            key = f"{self.attr}.{name}"
            if key in state:
                state[key] = value.to(state[key].dtype).clone()


def find_ema(trainer: L.Trainer | None) -> EMA | None:
    """The trainer's :class:`EMA` callback, if any."""
    if trainer is None:
        return None
    return next((cb for cb in trainer.callbacks if isinstance(cb, EMA)), None)


@contextlib.contextmanager
def use_ema(trainer: L.Trainer | None, pl_module: L.LightningModule) -> Iterator[bool]:
    """Within the block the EMA weights replace the online ones when the trainer has an :class:`EMA` callback
    (brought up to date with the current step first); yields whether they do."""
    ema = find_ema(trainer)
    if ema is None:
        yield False
        return
    ema.catch_up(trainer, pl_module)
    with ema.averaged_weights(pl_module):
        yield True
