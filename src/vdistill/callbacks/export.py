"""Export the trained backbone as a folder that ``vdistill sample --model`` loads.

The folder is written as a temporary folder beside ``dirpath`` and renamed into place when complete
(:func:`vdistill.export.write_export`): a fit that dies while exporting (a full disk, a kill) leaves the earlier
export complete, or none, never a half one. ``dirpath`` is replaced as a whole, so a folder holding anything but an
export is refused when ``fit`` starts, not after training.
"""

from __future__ import annotations

import lightning as L

from vdistill.callbacks.ema import use_ema
from vdistill.callbacks.periodic import backbone_of
from vdistill.export import EXPORT_FILES, write_export
from vdistill.files import check_replaceable


class ExportBackbone(L.Callback):
    """At the end of ``fit``, write ``backbone.yaml`` + ``model.safetensors`` of ``pl_module.<attr>`` to ``dirpath``.

    With an :class:`~vdistill.callbacks.ema.EMA` callback in the trainer the EMA weights are exported (unless
    ``ema`` is false); the checkpoints keep the online weights. The folder is replaced atomically (module docstring).

    Args:
        dirpath: the folder to write.
        attr: which attribute of the LightningModule holds the backbone (``None``: ``student`` if there is one,
            else ``backbone``).
        ema: export the EMA weights when an EMA callback is present.
    """

    def __init__(self, dirpath: str, attr: str | None = None, ema: bool = True) -> None:
        self.dirpath, self.attr, self.ema = dirpath, attr, ema

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        backbone_of(pl_module, self.attr)  # a wrong attr or folder fails now, not after training
        if stage == "fit":
            check_replaceable(self.dirpath, EXPORT_FILES, "ExportBackbone dirpath")

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        name, model = backbone_of(pl_module, self.attr)
        with use_ema(trainer if self.ema else None, pl_module) as averaged:
            if trainer.is_global_zero:
                path = write_export(model, self.dirpath, diffusers=False)
                print(f"exported {name}{' (EMA weights)' if averaged else ''} to {path}")
