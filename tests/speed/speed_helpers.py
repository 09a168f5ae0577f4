"""Helpers of the speed-feature tests: a short CPU fit on a trajectory set, parameter bytes."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from torch import nn

from vdistill.data.trajectories import TrajectoryData


def fit(model, data: Path, max_steps: int, callbacks=(), **trainer):
    """``max_steps`` of ``model`` on the trajectory set ``data`` (batches of 2, in order), CPU, no files written."""
    t = L.Trainer(max_steps=max_steps, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                  enable_progress_bar=False, enable_model_summary=False, callbacks=list(callbacks), **trainer)
    t.fit(model, datamodule=TrajectoryData(str(data), batch_size=2, shuffle=False))
    return t


def param_bytes(module: nn.Module, trainable: bool) -> int:
    """Bytes of ``module``'s trainable (or frozen) parameters, shared ones counted once."""
    seen = {id(p): p for p in module.parameters() if p.requires_grad == trainable}
    return sum(p.numel() * p.element_size() for p in seen.values())
