"""A distillation recipe read as data: the ``vdistill fit --config`` YAML files merged as LightningCLI merges them
(later files override keys; ``key+:`` appends to a list), without Lightning, jsonargparse or any weights."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from vdistill.errors import UserError

#: Lightning's DeepSpeedStrategy defaults (elements): the gradient-reduce and all-gather buckets
DEEPSPEED_BUCKETS = {"reduce_bucket_size": 2e8, "allgather_bucket_size": 2e8}


def merge(base: dict, over: dict) -> dict:
    """``over`` merged into a copy of ``base``: mappings key by key, ``key+`` appended to the list ``key``, anything
    else replaced."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(key, str) and key.endswith("+"):
            name = key[:-1]
            extra = value if isinstance(value, list) else [value]
            out[name] = [*(out.get(name) or []), *extra]
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def read_configs(paths: list[str]) -> dict:
    """The merged mapping of the YAML files ``paths`` (a one-line error for a missing or unparsable file)."""
    merged: dict = {}
    for path in paths:
        file = Path(path)
        if not file.is_file():
            raise UserError(f"--config {path!r} does not exist (give a recipe YAML, e.g. "
                            "experiments/wan/turbo_1.3b.yaml)")
        try:
            data = yaml.safe_load(file.read_text(encoding="utf-8"))
        except yaml.YAMLError as err:
            raise UserError(f"--config {path!r} is not valid YAML: {' '.join(str(err).split())}") from None
        if data is None:
            continue
        if not isinstance(data, dict):
            raise UserError(f"--config {path!r} must be a mapping of trainer / model / data, got a "
                            f"{type(data).__name__}")
        merged = merge(merged, data)
    return merged


def component(spec: Any, where: str) -> tuple[str, dict]:
    """``(short class name, init_args)`` of a ``{class_path, init_args}`` entry (or a bare class name)."""
    if isinstance(spec, str):
        return spec.rsplit(".", 1)[-1], {}
    if not isinstance(spec, dict) or "class_path" not in spec:
        raise UserError(f"{where} must be a {{class_path: ..., init_args: ...}} entry, got {spec!r}")
    return str(spec["class_path"]).rsplit(".", 1)[-1], dict(spec.get("init_args") or {})


@dataclass
class Recipe:
    """What a profile needs of a distillation recipe.

    Args:
        teacher: the teacher spec as written (a shipped name / path, or ``{class_path, init_args}``).
        student: ``model.student`` (``mode``, ``lora_rank``, ``gradient_checkpointing``, ...).
        objectives: ``(class name, init_args)`` of each objective.
        discriminator: ``(class name, init_args)`` or None.
        critics: ``model.critics`` as written.
        model_args: the other ``model.init_args`` (guidance, target_ema_decay, ...).
        data: ``(class name, init_args)`` of the datamodule.
        strategy: ``ddp``, ``deepspeed``, ``fsdp`` or ``single`` (no strategy named); ``strategy_args`` its init_args.
        precision: ``trainer.precision`` (``32-true`` when unset).
        accumulate: ``trainer.accumulate_grad_batches``.
        devices: ``trainer.devices`` when a positive number, else None.
    """

    sources: list[str]
    teacher: Any
    student: dict
    objectives: list[tuple[str, dict]]
    discriminator: tuple[str, dict] | None
    critics: Any
    model_args: dict
    data: tuple[str, dict]
    strategy: str = "single"
    strategy_args: dict = field(default_factory=dict)
    precision: str = "32-true"
    accumulate: int = 1
    devices: int | None = None

    @property
    def zero_stage(self) -> int | None:
        return int(self.strategy_args.get("stage", 2)) if self.strategy == "deepspeed" else None

    @property
    def strategy_name(self) -> str:
        return f"deepspeed_zero{self.zero_stage}" if self.strategy == "deepspeed" else self.strategy


STRATEGIES = {"DDPStrategy": "ddp", "ddp": "ddp", "DeepSpeedStrategy": "deepspeed", "FSDPStrategy": "fsdp",
              "fsdp": "fsdp", "deepspeed": "deepspeed", "deepspeed_stage_2": "deepspeed",
              "deepspeed_stage_3": "deepspeed", "auto": "single", "single_device": "single"}


def read_recipe(paths: list[str]) -> Recipe:
    """The :class:`Recipe` of the merged YAML files ``paths``; one-line errors for what a profile cannot read."""
    cfg = read_configs(paths)
    where = ", ".join(paths)
    model = cfg.get("model")
    if not isinstance(model, dict):
        raise UserError(f"{where}: no model section (a vdistill fit recipe has model: "
                        "{class_path: Distillation, ...})")
    name, args = component(model, "model")
    if name != "Distillation":
        raise UserError(f"{where}: model is {name!r}; vdistill profile reads Distillation recipes only")
    if "teacher" not in args:
        raise UserError(f"{where}: model.init_args.teacher is missing")
    objectives = [component(o, "model.init_args.objectives[]") for o in args.get("objectives") or []]
    if not objectives:
        raise UserError(f"{where}: model.init_args.objectives is empty")
    disc = args.get("discriminator")
    data = cfg.get("data")
    if data is None:
        raise UserError(f"{where}: no data section (TrajectoryData, VideoClips, LatentClips or ToyVideos)")
    trainer = cfg.get("trainer") or {}
    strategy, strategy_args = "single", {}
    raw = trainer.get("strategy")
    if raw is not None:
        sname, strategy_args = component(raw, "trainer.strategy")
        if sname not in STRATEGIES:
            raise UserError(f"{where}: trainer.strategy {sname!r} is not one of {sorted(set(STRATEGIES))}")
        strategy = STRATEGIES[sname]
        if sname == "deepspeed_stage_3":
            strategy_args.setdefault("stage", 3)
    devices = trainer.get("devices")
    others = {k: v for k, v in args.items()
              if k not in ("teacher", "student", "objectives", "discriminator", "critics")}
    return Recipe(
        sources=list(paths), teacher=args["teacher"], student=dict(args.get("student") or {}),
        objectives=objectives, discriminator=None if disc is None else component(disc, "model.init_args.discriminator"),
        critics=args.get("critics"), model_args=others, data=component(data, "data"), strategy=strategy,
        strategy_args=strategy_args, precision=str(trainer.get("precision", "32-true")),
        accumulate=int(trainer.get("accumulate_grad_batches", 1) or 1),
        devices=devices if isinstance(devices, int) and devices > 0 else None,
    )
