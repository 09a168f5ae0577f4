"""Every component the CLI can name by its short class name, grouped by kind for ``vdistill list``.

LightningCLI resolves a short ``class_path`` to any imported subclass of the parameter's type, so importing the
modules here is what registers a component.
"""

from __future__ import annotations

import inspect

import lightning as L

from vdistill import callbacks  # noqa: F401  (every callback)
from vdistill.backbones import toy  # noqa: F401
from vdistill.backbones.base import Backbone
from vdistill.data import toy as toy_data  # noqa: F401
from vdistill.diffusion.schedules import NoiseSchedule
from vdistill.modules import critic_training, distill, teacher  # noqa: F401
from vdistill.objectives import adversarial, consistency, reward, trajectory  # noqa: F401
from vdistill.objectives.base import Objective
from vdistill.synth import dataset as synth_dataset  # noqa: F401

KINDS: dict[str, type] = {
    "backbones (teachers / students)": Backbone,
    "schedules": NoiseSchedule,
    "modules (training recipes)": L.LightningModule,
    "objectives": Objective,
    "datamodules": L.LightningDataModule,
    "callbacks": L.Callback,
}


def _subclasses(base: type) -> list[type]:
    seen, stack = [], list(base.__subclasses__())
    while stack:
        cls = stack.pop()
        stack.extend(cls.__subclasses__())
        if cls.__module__.startswith("vdistill.") and not inspect.isabstract(cls) and cls not in seen:
            seen.append(cls)
    return sorted(seen, key=lambda c: c.__name__)


def components() -> dict[str, list[tuple[str, str]]]:
    """``{kind: [(short name, one-line summary)]}`` of every registered vdistill component."""
    out = {}
    for kind, base in KINDS.items():
        rows = []
        for cls in _subclasses(base):
            doc = inspect.getdoc(cls) or ""
            rows.append((cls.__name__, doc.splitlines()[0] if doc else ""))
        out[kind] = rows
    return out
