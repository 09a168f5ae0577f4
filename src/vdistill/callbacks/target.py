"""Which backbone of a LightningModule a callback samples, averages or exports."""

from __future__ import annotations

import lightning as L

from vdistill.backbones.base import Backbone
from vdistill.errors import UserError


def backbone_of(pl_module: L.LightningModule, attr: str | None = None) -> tuple[str, Backbone]:
    """``(name, pl_module.<name>)``: the backbone a callback samples, averages or exports.

    Args:
        pl_module: the LightningModule.
        attr: the attribute name; ``None``: ``student`` if the module has one (distillation), else ``backbone``
            (teacher training).
    """
    found = [n for n, m in pl_module.named_children() if isinstance(m, Backbone)]
    names = (attr,) if attr is not None else ("student", "backbone")
    for name in names:
        if isinstance(getattr(pl_module, name, None), Backbone):
            return name, getattr(pl_module, name)
    wanted = repr(attr) if attr is not None else "'student' or 'backbone'"
    raise UserError(f"{type(pl_module).__name__} has no backbone attribute {wanted}; valid choices: "
                    f"{', '.join(found) or 'none (this module holds no backbone)'}")
