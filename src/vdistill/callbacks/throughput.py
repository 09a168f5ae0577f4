"""Throughput and peak memory as ``perf/*`` curves (``callbacks/throughput.yaml``).

Lightning's ``ThroughputMonitor`` does the timing (CUDA synchronisation before reading the clock, validation time
kept out of the training rate, rolling window, FLOPs and MFU when the module defines ``flops_per_batch``); this
subclass gives it vdistill's batches, logs under ``perf/`` and adds the peak memory, which it does not measure.

With ``torch.compile`` (``Distillation(compile=true)``) the steps that compile take minutes, not milliseconds. The
rates are differences over a window of cumulative times, so the first step's time (the window's base) never enters
them, but a later step that compiles does: a recompile for a new batch shape, the first step without gradient
(validation) or on another branch (DMD's fake-score-only steps). Every step during which torch.compile built a graph
(dynamo's ``unique_graphs`` counter moved) is left out: not counted, and the clock moved past it as Lightning moves
it past validation, so no rate window spans it; ``perf/compile_steps`` counts them.
"""

from __future__ import annotations

import resource
import sys
import time
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ThroughputMonitor
from lightning.pytorch.trainer.states import RunningStage
from lightning.pytorch.utilities import rank_zero_only
from torch import Tensor

from vdistill.errors import UserError

_GIB = 1024**3


def batch_size(batch: Any) -> int:
    """Samples in a vdistill batch: a trajectory batch ``{"latents": [B, K, C, T, H, W], ...}``, a video batch
    ``(videos [B, T, 3, H, W], prompts)``, a dict with ``prompts`` / ``prompt``, or a tensor ``[B, ...]``."""
    if isinstance(batch, Tensor):
        return int(batch.shape[0])
    if isinstance(batch, dict):
        for key in ("latents", "videos", "prompts", "prompt"):
            if key in batch:
                return batch_size(batch[key])
    if isinstance(batch, (tuple, list)) and batch:
        first = batch[0]
        return batch_size(first) if isinstance(first, (Tensor, dict, tuple, list)) else len(batch)
    raise UserError(f"cannot tell the batch size of a {type(batch).__name__} batch; expected a tensor, a dict with "
                    "latents / videos / prompts, or (videos, prompts)")


def peak_memory(device: torch.device) -> dict[str, float]:
    """``{"peak_cuda_allocated_gib": ...}`` on a CUDA device (``torch.cuda.max_memory_allocated``), else the
    process's peak resident set size ``{"peak_rss_gib": ...}`` (``getrusage``: KiB on Linux, bytes on macOS)."""
    if device.type == "cuda":
        return {"peak_cuda_allocated_gib": torch.cuda.max_memory_allocated(device) / _GIB,
                "peak_cuda_reserved_gib": torch.cuda.max_memory_reserved(device) / _GIB}
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"peak_rss_gib": rss * (1 if sys.platform == "darwin" else 1024) / _GIB}


def compiled_graphs() -> int:
    """Graphs torch.compile has built in this process so far (dynamo's ``unique_graphs`` counter; 0 when dynamo
    was never imported, so nothing was compiled)."""
    utils = sys.modules.get("torch._dynamo.utils")
    return 0 if utils is None else int(utils.counters["stats"]["unique_graphs"])


class ThroughputMemory(ThroughputMonitor):
    """Steps/s, samples/s and peak memory (CUDA, or the process's RSS on CPU) as ``perf/*`` curves.

    Logged every ``log_every_n_steps`` as ``perf/steps_per_sec`` (optimizer steps per second, this device),
    ``perf/samples_per_sec`` (all devices), ``perf/flops_per_sec`` and ``perf/mfu`` (when the module defines
    ``flops_per_batch``), and ``perf/peak_cuda_allocated_gib`` + ``perf/peak_cuda_reserved_gib`` on a GPU or
    ``perf/peak_rss_gib`` (the process's peak RSS) on the CPU.
    Validation rates go under ``perf/validate/``.

    The rates are rolling means over the last ``window_size`` batches: they appear once that many batches ran.
    Time spent in other callbacks' step hooks (video samples, evaluation) counts as training time. Batches during
    which ``torch.compile`` compiled are left out of the rates (module docstring) and counted in
    ``perf/compile_steps``.

    Args:
        window_size: batches in the rolling window (>= 2).
    """

    def __init__(self, window_size: int = 20) -> None:
        if window_size < 2:
            raise UserError(f"ThroughputMemory: window_size must be >= 2, got {window_size}")
        super().__init__(batch_size_fn=batch_size, window_size=window_size)
        self.compile_steps = 0
        self._graphs_before = 0

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        # FLOPs are optional here: skip ThroughputMonitor's warning for modules without flops_per_batch
        self._module_has_flops = hasattr(pl_module, "flops_per_batch")
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(trainer.strategy.root_device)

    def _compiled_now(self, trainer: L.Trainer) -> bool:
        """Whether torch.compile built a graph during the batch that just ended; if so, move this stage's clock
        past the batch (from the last recorded point to now), as ThroughputMonitor moves it past validation."""
        graphs = compiled_graphs()
        compiled, self._graphs_before = graphs != self._graphs_before, graphs
        if compiled:
            stage = trainer.state.stage
            times = self._throughputs[stage]._time
            elapsed = time.perf_counter() - self._t0s[stage]
            self._t0s[stage] += elapsed - (times[-1] if times else 0.0)
            self.compile_steps += 1
        return compiled

    @rank_zero_only
    def on_train_batch_start(self, trainer: L.Trainer, *_: Any) -> None:
        self._graphs_before = compiled_graphs()

    @rank_zero_only
    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           *args: Any) -> None:
        if not self._compiled_now(trainer):
            super().on_train_batch_end(trainer, pl_module, outputs, batch, *args)

    @rank_zero_only
    def on_validation_batch_start(self, trainer: L.Trainer, *_: Any, **__: Any) -> None:
        self._graphs_before = compiled_graphs()

    @rank_zero_only
    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                                *args: Any, **kwargs: Any) -> None:
        if trainer.sanity_checking or not self._compiled_now(trainer):
            super().on_validation_batch_end(trainer, pl_module, outputs, batch, *args, **kwargs)

    def _compute(self, trainer: L.Trainer, iter_num: int | None = None) -> None:
        # ThroughputMonitor's own hook (it would log `train/device/batches_per_sec`, ...): our names, plus memory.
        # tests/callbacks/test_throughput_memory.py pins the names against upgrades.
        stage = trainer.state.stage
        train = stage == RunningStage.TRAINING
        count = trainer.global_step if train else iter_num  # ThroughputMonitor counts the evaluation batches
        if not logs_now(trainer, count):
            return
        raw = self._throughputs[stage].compute()
        prefix = "perf/" if train else f"perf/{stage.value}/"
        metrics: dict[str, float] = {}
        if "device/batches_per_sec" in raw:
            per_step = trainer.accumulate_grad_batches if train else 1
            metrics[prefix + ("steps_per_sec" if train else "batches_per_sec")] = \
                raw["device/batches_per_sec"] / per_step
            metrics[prefix + "samples_per_sec"] = raw.get("samples_per_sec", raw["device/samples_per_sec"])
        for key in ("device/flops_per_sec", "device/mfu"):
            if key in raw:
                metrics[prefix + key.split("/")[1]] = raw[key]
        if train:
            metrics.update({prefix + k: v for k, v in peak_memory(trainer.strategy.root_device).items()})
            if self.compile_steps:
                metrics[prefix + "compile_steps"] = float(self.compile_steps)
        if metrics:
            # a training step's curves at the step of the module's own (`self.log`: the optimizer steps before it)
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=count - 1 if train else count)


def logs_now(trainer: L.Trainer, count: int) -> bool:
    """Whether the loggers get this batch's metrics, by Lightning's rule for ``self.log`` in training (which
    ThroughputMonitor applies to evaluation batches too): every ``trainer.log_every_n_steps``-th batch, and the last
    before a stop. ``count``: the optimizer steps so far (training, called after the step) or the evaluation batches
    so far, this one included."""
    every = trainer.log_every_n_steps
    return every > 0 and (count % every == 0 or trainer.should_stop)
