"""Periodic checkpoints in the run's own folder, where a restarted run finds ``last.ckpt``
(``callbacks/adapter_checkpoints.yaml``).

What a checkpoint holds is the module's business: ``Distillation`` leaves the frozen teacher and critics out, and
for a LoRA student whose teacher can be rebuilt (a shipped name, a path, a diffusers folder config) keeps only the
adapters and the guidance projection (``vdistill export --ckpt`` merges them; ``vdistill sample --model`` loads
them directly).
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint

from vdistill.errors import UserError


class PeriodicCheckpoints(ModelCheckpoint):
    """Checkpoints every N optimizer steps + ``last.ckpt`` in ``<default_root_dir>/checkpoints`` (resumable).

    A ``ModelCheckpoint`` with ``every_n_train_steps``, in ``<trainer.default_root_dir>/checkpoints`` by default.

    Lightning's own default folder is the logger's ``version_N/checkpoints``, and a restarted process gets a new
    version, so ``--ckpt_path last`` would find nothing; this folder does not change between restarts.

    Args:
        every_n_train_steps: save every this many optimizer steps.
        save_top_k: how many periodic checkpoints to keep (-1: all, 0: only ``last.ckpt``).
        save_last: also keep ``last.ckpt`` (what ``--ckpt_path last`` resumes).
        dirpath: the folder (``None``: ``<default_root_dir>/checkpoints``).
        filename: file name pattern of the periodic checkpoints.
    """

    def __init__(self, every_n_train_steps: int = 500, save_top_k: int = -1, save_last: bool = True,
                 dirpath: str | None = None, filename: str = "step_{step:06d}") -> None:
        if every_n_train_steps < 1:
            raise UserError(f"PeriodicCheckpoints: every_n_train_steps must be >= 1, got {every_n_train_steps}")
        super().__init__(dirpath=dirpath, filename=filename, every_n_train_steps=every_n_train_steps,
                         save_top_k=save_top_k, save_last=save_last, auto_insert_metric_name=False)

    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        # Private hook of ModelCheckpoint (Lightning 2.6), the one place every save of this callback goes through.
        # Lightning writes through fsspec: a temp file in the system temp folder, MOVED over ``filepath``, which is a
        # copy when that folder is on another disk, so a kill -9 or a full disk mid-copy leaves half a last.ckpt.
        # Written beside it under a name no resume picks up, then renamed, the previous checkpoint stays whole
        # until the new one is.
        partial = os.path.join(os.path.dirname(filepath), f".writing-{uuid.uuid4().hex[:8]}.tmp")
        partial = trainer.strategy.broadcast(partial)  # every rank of a sharded save writes into the same place
        try:
            super()._save_checkpoint(trainer, partial)
        except BaseException:
            remove(partial)
            raise
        if trainer.is_global_zero:
            replace_checkpoint(partial, filepath)
        trainer.strategy.barrier("PeriodicCheckpoints")
        self._last_checkpoint_saved = filepath

    def _run_folder(self, trainer: L.Trainer) -> None:
        if self.dirpath is None:
            self.dirpath = os.path.realpath(Path(trainer.default_root_dir) / "checkpoints")

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._run_folder(trainer)
        if trainer.is_global_zero and os.path.isdir(self.dirpath):  # what a killed save left
            for stale in Path(self.dirpath).glob(".writing-*.tmp"):
                remove(str(stale))
        super().setup(trainer, pl_module, stage)

    def _find_last_checkpoints(self, trainer: L.Trainer) -> set[str]:
        # Private hook of ModelCheckpoint (Lightning 2.6): the Trainer resolves `ckpt_path="last"` by asking each
        # ModelCheckpoint for its last checkpoints before any callback hook runs (setup included), with `dirpath`
        # still unset, so the parent would look in the logger's version folder (a new one after a restart). No public
        # option names a folder that depends on the trainer (`dirpath` is fixed at construction): the run folder is
        # set here.
        self._run_folder(trainer)
        return super()._find_last_checkpoints(trainer)


def replace_checkpoint(partial: str, filepath: str) -> None:
    """Move a finished checkpoint (a file, or the folder of a sharded DeepSpeed / FSDP save) over ``filepath``.

    A file replaces the old one in one rename. A folder cannot: the old one is renamed aside first and deleted
    after, so a kill between the two renames leaves the previous checkpoint as ``<name>.old-*``.
    """
    if os.path.isfile(partial):
        with open(partial, "rb") as f:
            os.fsync(f.fileno())
        os.replace(partial, filepath)
        return
    aside = None
    if os.path.exists(filepath):
        aside = f"{filepath}.old-{uuid.uuid4().hex[:8]}"
        os.replace(filepath, aside)
    os.replace(partial, filepath)
    if aside is not None:
        remove(aside)


def remove(path: str) -> None:
    if os.path.isdir(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.exists(path):
        os.remove(path)
