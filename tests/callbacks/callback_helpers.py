"""Tiny distillation runs with callbacks, and a logger that keeps what it was given."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from lightning.pytorch.loggers import Logger

from vdistill.backbones.student import StudentConfig
from vdistill.data.trajectories import TrajectoryData
from vdistill.modules.distill import Distillation
from vdistill.objectives import TrajectoryGuidance

# the prompts of tests/modules/test_distill.py's trajectory data
PROMPTS = ["a red circle moving left", "a blue square moving up"]


class MemoryLogger(Logger):
    """Keeps every ``log_metrics`` call as ``(step, metrics)``."""

    def __init__(self) -> None:
        super().__init__()
        self.history: list[tuple[int, dict]] = []

    @property
    def name(self) -> str:
        return "memory"

    @property
    def version(self) -> int:
        return 0

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        self.history.append((step, dict(metrics)))

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass

    def keys(self) -> set[str]:
        return {k for _, m in self.history for k in m}


def distillation(toy: Path, lora: bool = False) -> Distillation:
    """A trajectory-guidance student of the tiny toy teacher (full, or LoRA rank 4)."""
    student = StudentConfig(mode="lora", lora_rank=4) if lora else StudentConfig()
    return Distillation(str(toy / "teacher"), [TrajectoryGuidance()], student=student, lr=1e-2)


def fit(model: L.LightningModule, toy: Path, root: Path, callbacks: list, max_steps: int = 2, logger=False,
        ckpt_path: str | None = None, **trainer_kwargs) -> L.Trainer:
    """``max_steps`` steps on the tiny trajectory data, run folder ``root``."""
    trainer = L.Trainer(max_steps=max_steps, accelerator="cpu", devices=1, logger=logger, callbacks=callbacks,
                        default_root_dir=str(root), enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, **trainer_kwargs)
    trainer.fit(model, datamodule=TrajectoryData(str(toy / "data"), batch_size=2, shuffle=False),
                ckpt_path=ckpt_path)
    return trainer
