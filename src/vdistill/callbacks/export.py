"""Export the trained backbone as a folder that ``vdistill sample --model`` loads and, for diffusers teachers, that
``DiffusionPipeline.from_pretrained`` loads (the same folder as ``vdistill export``, :mod:`vdistill.backbones.export`).

The folder is written as a temporary folder beside ``dirpath`` and renamed into place when complete
(:func:`vdistill.backbones.export.write_export`): a fit that dies while exporting (a full disk, a kill) leaves the
earlier export complete, or none, never a half one. ``dirpath`` is replaced as a whole, so a folder holding anything but
an export is refused when ``fit`` starts, not after training.
"""

from __future__ import annotations

import lightning as L

from vdistill.backbones.export import check_export_folder, write_export
from vdistill.callbacks.ema import use_ema
from vdistill.callbacks.target import backbone_of


class ExportBackbone(L.Callback):
    """At the end of ``fit``, export ``pl_module.<attr>`` to ``dirpath``: vdistill format and diffusers pipeline.

    ``backbone.yaml`` + ``model.safetensors``, and for a student of a diffusers teacher the diffusers pipeline
    (merged denoiser, scheduler, the teacher's VAE, text encoder and tokenizer) with, for a LoRA student,
    ``pytorch_lora_weights.safetensors`` (:func:`vdistill.backbones.export.write_export`).

    With an :class:`~vdistill.callbacks.ema.EMA` callback in the trainer the EMA weights are exported (unless
    ``ema`` is false); the checkpoints keep the online weights. The folder is replaced atomically (module docstring).

    Args:
        dirpath: the folder to write.
        attr: which attribute of the LightningModule holds the backbone (``None``: ``student`` if there is one,
            else ``backbone``).
        ema: export the EMA weights when an EMA callback is present.
        diffusers: also write the diffusers pipeline (diffusers teachers; the toy backbone has none).
    """

    def __init__(self, dirpath: str, attr: str | None = None, ema: bool = True, diffusers: bool = True) -> None:
        self.dirpath, self.attr, self.ema, self.diffusers = dirpath, attr, ema, diffusers

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        backbone_of(pl_module, self.attr)  # a wrong attr or folder fails now, not after training
        if stage == "fit":
            check_export_folder(self.dirpath, "ExportBackbone dirpath")

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        name, model = backbone_of(pl_module, self.attr)
        with use_ema(trainer if self.ema else None, pl_module) as averaged:
            if trainer.is_global_zero:
                summary = write_export(model, self.dirpath, diffusers=self.diffusers)
                print(f"exported {name}{' (EMA weights)' if averaged else ''} to {summary.path} "
                      f"({summary.describe()})")
