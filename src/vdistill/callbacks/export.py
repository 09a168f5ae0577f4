"""Export the trained backbone as a folder that ``vdistill sample --model`` loads."""

from __future__ import annotations

import lightning as L

from vdistill.backbones.io import save_backbone


class ExportBackbone(L.Callback):
    """At the end of ``fit``, write ``backbone.yaml`` + ``model.safetensors`` of ``pl_module.<attr>`` to ``dirpath``.

    Args:
        dirpath: the folder to write.
        attr: which attribute of the LightningModule holds the backbone (``backbone`` or ``student``).
    """

    def __init__(self, dirpath: str, attr: str = "backbone") -> None:
        self.dirpath, self.attr = dirpath, attr

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            path = save_backbone(getattr(pl_module, self.attr), self.dirpath)
            print(f"exported {self.attr} to {path}")
