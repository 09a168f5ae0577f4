"""Every vdistill component by its short class name, kind and module: a table that needs no imports.

The table is what a config record read from a file (a checkpoint, an exported ``backbone.yaml``) may name: see
:func:`vdistill.config.resolve_class`, which looks a ``class_path`` up here before anything is imported.
LightningCLI resolves a short ``class_path`` to any imported subclass of the parameter's type, so the CLI imports
every module of the table (:func:`import_all`) before it parses a config. A test checks the table against the
subclasses the package really defines, so a new component cannot be forgotten here.
"""

from __future__ import annotations

import importlib
import inspect

#: kind -> (module, class) of the base every component of that kind derives from, in ``vdistill list`` order
KINDS: dict[str, tuple[str, str]] = {
    "backbones (teachers / students)": ("vdistill.backbones.base", "Backbone"),
    "schedules": ("vdistill.diffusion.schedules", "NoiseSchedule"),
    "modules (training recipes)": ("lightning", "LightningModule"),
    "objectives": ("vdistill.objectives.base", "Objective"),
    "discriminators": ("vdistill.modules.discriminator", "Discriminator"),
    "datamodules": ("lightning", "LightningDataModule"),
    "callbacks": ("lightning", "Callback"),
}

#: short class name -> (kind, module defining it)
COMPONENTS: dict[str, tuple[str, str]] = {
    "ToyBackbone": ("backbones (teachers / students)", "vdistill.backbones.toy"),
    "ModelScopeBackbone": ("backbones (teachers / students)", "vdistill.backbones.modelscope"),
    "WanBackbone": ("backbones (teachers / students)", "vdistill.backbones.wan"),
    "DDPMSchedule": ("schedules", "vdistill.diffusion.schedules"),
    "FlowSchedule": ("schedules", "vdistill.diffusion.schedules"),
    "CriticTraining": ("modules (training recipes)", "vdistill.modules.critic_training"),
    "Distillation": ("modules (training recipes)", "vdistill.modules.distill"),
    "TeacherTraining": ("modules (training recipes)", "vdistill.modules.teacher"),
    "AdversarialAlignment": ("objectives", "vdistill.objectives.adversarial"),
    "ConsistencyDistillation": ("objectives", "vdistill.objectives.consistency"),
    "RewardFeedback": ("objectives", "vdistill.objectives.reward"),
    "TrajectoryGuidance": ("objectives", "vdistill.objectives.trajectory"),
    "Discriminator": ("discriminators", "vdistill.modules.discriminator"),
    "ToyVideos": ("datamodules", "vdistill.data.toy"),
    "TrajectoryData": ("datamodules", "vdistill.synth.dataset"),
    "EMA": ("callbacks", "vdistill.callbacks.ema"),
    "ExportBackbone": ("callbacks", "vdistill.callbacks.export"),
    "PeriodicCheckpoints": ("callbacks", "vdistill.callbacks.checkpoints"),
    "PeriodicEvaluation": ("callbacks", "vdistill.callbacks.evaluation"),
    "ThroughputMemory": ("callbacks", "vdistill.callbacks.throughput"),
    "VideoSamples": ("callbacks", "vdistill.callbacks.video_samples"),
}


def lookup(class_path: str) -> str | None:
    """The short name of the component ``class_path`` names (its short name or its exact dotted path), else None."""
    if class_path in COMPONENTS:
        return class_path
    module, _, name = class_path.rpartition(".")
    return name if name in COMPONENTS and COMPONENTS[name][1] == module else None


def dotted(name: str) -> str:
    return f"{COMPONENTS[name][1]}.{name}"


def base_class(kind: str) -> type:
    module, name = KINDS[kind]
    return getattr(importlib.import_module(module), name)


def load(name: str) -> type:
    """The class of the component ``name`` (a key of :data:`COMPONENTS`), importing only its own module."""
    return getattr(importlib.import_module(COMPONENTS[name][1]), name)


def import_all() -> None:
    """Import every component's module (what LightningCLI needs to resolve short names)."""
    for _, module in COMPONENTS.values():
        importlib.import_module(module)


def components() -> dict[str, list[tuple[str, str]]]:
    """``{kind: [(short name, one-line summary)]}`` of every registered vdistill component."""
    out: dict[str, list[tuple[str, str]]] = {kind: [] for kind in KINDS}
    for name in sorted(COMPONENTS):
        doc = inspect.getdoc(load(name)) or ""
        out[COMPONENTS[name][0]].append((name, doc.splitlines()[0] if doc else ""))
    return out
