"""Every vdistill component by its short class name, kind and module, and every critic by name: tables that need no
imports (``vdistill --help`` stays fast; a module is imported when its component is used).

The table is what a config record read from a file (a checkpoint, an exported ``backbone.yaml``) may name: see
:func:`vdistill.config.resolve_class`, which looks a ``class_path`` up here before anything is imported.
LightningCLI resolves a short ``class_path`` to any imported subclass of the parameter's type, so the CLI imports
every module of the table (:func:`import_all`) before it parses a config. A test checks the table against the
subclasses the package really defines, so a new component cannot be forgotten here.
"""

from __future__ import annotations

import ast
import importlib
import inspect
from pathlib import Path

from vdistill.errors import UserError

#: kind -> (title in ``vdistill list``, module and class of the base every component of that kind derives from)
KINDS: dict[str, tuple[str, str, str]] = {
    "backbones": ("backbones (teachers / students)", "vdistill.backbones.base", "Backbone"),
    "schedules": ("noise schedules", "vdistill.diffusion.schedules", "NoiseSchedule"),
    "modules": ("modules (training recipes)", "lightning", "LightningModule"),
    "objectives": ("objectives", "vdistill.objectives.base", "Objective"),
    "discriminators": ("discriminators", "vdistill.roles.discriminator", "Discriminator"),
    "datamodules": ("datamodules", "lightning", "LightningDataModule"),
    "callbacks": ("callbacks", "lightning", "Callback"),
}

#: short class name -> (kind, module defining it)
COMPONENTS: dict[str, tuple[str, str]] = {
    "ToyBackbone": ("backbones", "vdistill.backbones.toy"),
    "ModelScopeBackbone": ("backbones", "vdistill.backbones.modelscope"),
    "WanBackbone": ("backbones", "vdistill.backbones.wan"),
    "HunyuanVideoBackbone": ("backbones", "vdistill.backbones.hunyuan"),
    "DDPMSchedule": ("schedules", "vdistill.diffusion.schedules"),
    "FlowSchedule": ("schedules", "vdistill.diffusion.schedules"),
    "CriticTraining": ("modules", "vdistill.modules.critic_training"),
    "Distillation": ("modules", "vdistill.modules.distill"),
    "TeacherTraining": ("modules", "vdistill.modules.teacher"),
    "AdversarialAlignment": ("objectives", "vdistill.objectives.adversarial"),
    "ConsistencyDistillation": ("objectives", "vdistill.objectives.consistency"),
    "DistributionMatching": ("objectives", "vdistill.objectives.distribution_matching"),
    "RewardFeedback": ("objectives", "vdistill.objectives.reward"),
    "TrajectoryGuidance": ("objectives", "vdistill.objectives.trajectory"),
    "Discriminator": ("discriminators", "vdistill.roles.discriminator"),
    "ToyVideos": ("datamodules", "vdistill.data.toy"),
    "VideoClips": ("datamodules", "vdistill.data.video_clips"),
    "LatentClips": ("datamodules", "vdistill.data.latent_clips"),
    "TrajectoryData": ("datamodules", "vdistill.data.trajectories"),
    "EMA": ("callbacks", "vdistill.callbacks.ema"),
    "ExportBackbone": ("callbacks", "vdistill.callbacks.export"),
    "PeriodicCheckpoints": ("callbacks", "vdistill.callbacks.checkpoints"),
    "PeriodicEvaluation": ("callbacks", "vdistill.callbacks.evaluation"),
    "ThroughputMemory": ("callbacks", "vdistill.callbacks.throughput"),
    "VideoSamples": ("callbacks", "vdistill.callbacks.video_samples"),
}

#: where a component lived before the layout settled (configs and checkpoints written earlier name it so)
FORMER_HOMES: dict[str, tuple[str, ...]] = {
    "Discriminator": ("vdistill.modules.discriminator",),
    "TrajectoryData": ("vdistill.synth.dataset", "vdistill.synth"),
    "LatentClips": ("vdistill.preprocess.dataset", "vdistill.preprocess"),
}

#: reward critics by the name ``load_critic`` and the configs use -> (module registering it, one-line summary)
CRITICS: dict[str, tuple[str, str]] = {
    "hpsv2": ("vdistill.critics.hpsv2", "image: HPSv2.1 (open_clip ViT-H-14), HPS_v2.1_compressed.pt"),
    "pickscore": ("vdistill.critics.pickscore", "image: PickScore v1 (CLIP ViT-H-14), PickScore_v1/ folder"),
    "viclip": ("vdistill.critics.viclip", "video: ViCLIP-L/14, ViClip-InternVid-10M-FLT.pth"),
    "internvideo2": ("vdistill.critics.internvideo2", "video: InternVideo2 stage 2 (1B), "
                     "InternVideo2-stage2_1b-224p-f4.pt"),
    "toy-image": ("vdistill.critics.toy", "image: the shipped toy-world image critic"),
    "toy-video": ("vdistill.critics.toy", "video: the shipped toy-world video critic"),
}


def lookup(class_path: str) -> str | None:
    """The short name of the component ``class_path`` names (its short name or its exact dotted path), else None."""
    if class_path in COMPONENTS:
        return class_path
    module, _, name = class_path.rpartition(".")
    if name not in COMPONENTS:
        return None
    home = COMPONENTS[name][1]
    # the defining module, or a vdistill package above it that re-exports it (jsonargparse prints
    # ``vdistill.objectives.TrajectoryGuidance``)
    if module in FORMER_HOMES.get(name, ()):
        return name
    return name if module == home or (module.startswith("vdistill.") and home.startswith(module + ".")) else None


def dotted(name: str) -> str:
    return f"{COMPONENTS[name][1]}.{name}"


def base_class(kind: str) -> type:
    _, module, name = KINDS[kind]
    return getattr(importlib.import_module(module), name)


def load(name: str) -> type:
    """The class of the component ``name`` (a key of :data:`COMPONENTS`), importing only its own module."""
    return getattr(importlib.import_module(COMPONENTS[name][1]), name)


def import_all() -> None:
    """Import every component's module (what LightningCLI needs to resolve short names)."""
    for _, module in COMPONENTS.values():
        importlib.import_module(module)


def components(kind: str | None = None) -> dict[str, list[tuple[str, str]]]:
    """``{kind title: [(short name, one-line summary)]}`` of every registered component and critic (of ``kind``
    only when given: a key of :data:`KINDS` or ``critics``)."""
    valid = [*KINDS, "critics"]
    if kind is not None and kind not in valid:
        raise UserError(f"unknown kind {kind!r}; valid kinds: {', '.join(valid)}")
    out: dict[str, list[tuple[str, str]]] = {}
    for key, (title, _, _) in KINDS.items():
        if kind in (None, key):
            names = sorted(n for n, (k, _) in COMPONENTS.items() if k == key)
            out[title] = [(n, summary(n)) for n in names]
    if kind in (None, "critics"):
        out["critics (reward models, by name)"] = [(n, summary) for n, (_, summary) in CRITICS.items()]
    return out


def summary(name: str) -> str:
    """The first line of component ``name``'s docstring, read from its module's source with ``ast`` (nothing is
    imported: ``vdistill list`` stays fast); a module that is not a file of this package is imported."""
    module = COMPONENTS[name][1]
    parts = module.split(".")
    root = Path(__file__).resolve().parent
    source = next((f for f in (root.joinpath(*parts[1:]).with_suffix(".py"), root.joinpath(*parts[1:], "__init__.py"))
                   if parts[0] == "vdistill" and f.is_file()), None)
    if source is None:
        doc = inspect.getdoc(load(name)) or ""
    else:
        tree = ast.parse(source.read_text())
        cls = next((n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == name), None)
        doc = (ast.get_docstring(cls) if cls is not None else None) or inspect.getdoc(load(name)) or ""
    return doc.splitlines()[0] if doc else ""
