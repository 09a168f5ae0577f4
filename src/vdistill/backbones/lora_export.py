"""A LoRA student's adapter in the diffusers / peft format: ``pytorch_lora_weights.safetensors``, so that
``pipe.load_lora_weights(DIR)`` on the TEACHER's pipeline gives the student.

The file is written by the pipeline class's own ``save_lora_weights`` (keys ``transformer.<module>.lora_A.weight``
/ ``unet.<module>.lora_B.weight``) with the adapter's ``LoraConfig`` as its ``lora_adapter_metadata``, which
diffusers' ``load_lora_adapter`` builds the adapter from (rank, alpha, the exact target modules).

A consistency student's fixed embedded guidance scale is a constant bias of its time embedding's last linear layer
(:func:`vdistill.backbones.pipeline_export.guidance_fold`). A bias is not a low-rank weight: it travels as peft's
``lora_bias`` (``lora_B.bias``, what diffusers' Wan converter makes of ``.diff_b`` keys), which peft adds as
``lora_B.bias * scaling``. ``lora_bias`` is one flag for the whole adapter, so every target gets a ``lora_B.bias``
(zero but on that layer); a layer the adapter did not target gets zero rank-1 factors (``rank_pattern`` /
``alpha_pattern`` 1: scaling 1). peft cannot *fuse* a ``lora_B.bias`` into a layer that has no bias (the attention
projections of ModelScope's UNet): ``pipe.fuse_lora()`` then fails, the unfused adapter works.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from torch import Tensor

from vdistill.backbones.base import Backbone
from vdistill.backbones.pipeline_export import family_of, guidance_fold

WEIGHT_NAME = "pytorch_lora_weights.safetensors"
_ADAPTER_NAME = re.compile(r"\.(lora_[AB])\.[^.]+\.(weight|bias)$")


@dataclass
class LoraAdapters:
    """Adapter weights in peft's names without the adapter name (``blocks.0.attn1.to_q.lora_A.weight``, relative
    to the denoiser), and the adapter's rank and alpha (scaling ``alpha / rank``)."""

    weights: dict[str, Tensor]
    rank: int
    alpha: float


def adapters_of(model: Backbone) -> LoraAdapters | None:
    """The adapters of a LoRA student in memory (``None`` for any other model)."""
    lora = getattr(model.denoiser, "vdistill_lora", None)
    if lora is None:
        return None
    from peft import get_peft_model_state_dict

    rank = int(lora["rank"])
    alpha = float(rank if lora.get("alpha") is None else lora["alpha"])
    return LoraAdapters(dict(get_peft_model_state_dict(model.denoiser)), rank, alpha)


def adapters_from_state(state: dict[str, Tensor], prefix: str, lora: dict) -> LoraAdapters | None:
    """The adapters stored under ``prefix`` (``student.denoiser.``) in a checkpoint's or export's weights, with
    peft's adapter name (``lora_A.default.weight``) dropped; ``None`` when there are none."""
    weights = {_ADAPTER_NAME.sub(r".\1.\2", k[len(prefix):]): v for k, v in state.items()
               if k.startswith(prefix) and ".lora_" in k}
    rank = int(lora["rank"])
    alpha = float(rank if lora.get("alpha") is None else lora["alpha"])
    return LoraAdapters(weights, rank, alpha) if weights else None


def adapters_from_file(spec: str | Path) -> LoraAdapters | None:
    """The adapters of what :func:`vdistill.backbones.io.load_backbone` loaded from ``spec`` (merged there): a
    ``.ckpt`` of a LoRA student (adapter-only or full) or an export folder that records ``lora``; else ``None``."""
    from vdistill.checkpoints import load_checkpoint_file, read_state_dict

    path = Path(spec)
    if path.is_file() and path.suffix == ".ckpt":
        ckpt = load_checkpoint_file(path, mmap=True)
        lora = (ckpt.get("vdistill_backbone") or {}).get("lora")
        state = ckpt.get("state_dict") or {}
        prefix = next((p for p in ("student.denoiser.", "backbone.denoiser.") if any(k.startswith(p) for k in state)),
                      None)
        return adapters_from_state(state, prefix, lora) if lora and prefix else None
    if (path / "backbone.yaml").is_file():
        lora = (yaml.safe_load((path / "backbone.yaml").read_text()) or {}).get("lora")
        if lora:
            return adapters_from_state(read_state_dict(path / "model.safetensors"), "denoiser.", lora)
    return None


def diffusers_lora(model: Backbone, adapters: LoraAdapters) -> tuple[dict[str, Tensor], dict]:
    """``(weights, LoraConfig kwargs)`` of the adapter with the guidance fold (module docstring); names relative to
    the denoiser."""
    weights = dict(adapters.weights)
    targets = sorted({k.rsplit(".lora_", 1)[0] for k in weights})
    config = {"r": adapters.rank, "lora_alpha": adapters.alpha, "target_modules": targets, "rank_pattern": {},
              "alpha_pattern": {}, "lora_bias": False, "lora_dropout": 0.0}
    fold = guidance_fold(model)
    if fold is None:
        return weights, config
    name, delta = fold
    dtype = weights[f"{targets[0]}.lora_B.weight"].dtype
    for target in targets:
        weights[f"{target}.lora_B.bias"] = torch.zeros(weights[f"{target}.lora_B.weight"].shape[0], dtype=dtype)
    scaling = adapters.alpha / adapters.rank
    if name not in targets:
        linear = model.denoiser.get_submodule(name)
        linear = linear.get_base_layer() if hasattr(linear, "get_base_layer") else linear
        weights[f"{name}.lora_A.weight"] = torch.zeros(1, linear.in_features, dtype=dtype)
        weights[f"{name}.lora_B.weight"] = torch.zeros(linear.out_features, 1, dtype=dtype)
        config["target_modules"] = sorted([*targets, name])
        config["rank_pattern"], config["alpha_pattern"] = {name: 1}, {name: 1.0}
        scaling = 1.0
    weights[f"{name}.lora_B.bias"] = (delta.cpu() / scaling).to(dtype)
    config["lora_bias"] = True
    return weights, config


def write_diffusers_lora(model: Backbone, adapters: LoraAdapters, folder: str | Path) -> Path:
    """Write ``pytorch_lora_weights.safetensors`` into ``folder`` with the pipeline class's ``save_lora_weights``."""
    import diffusers

    family = family_of(model)
    weights, config = diffusers_lora(model, adapters)
    weights = {k: v.detach().cpu().contiguous() for k, v in weights.items()}
    getattr(diffusers, family.pipeline).save_lora_weights(
        str(folder), weight_name=WEIGHT_NAME, **{f"{family.denoiser}_lora_layers": weights,
                                                 f"{family.denoiser}_lora_adapter_metadata": config})
    return Path(folder) / WEIGHT_NAME


def load_lora_weights(pipe, folder: str | Path, adapter_name: str = "default") -> None:
    """Load ``folder/pytorch_lora_weights.safetensors`` into ``pipe`` (a teacher's pipeline) unfused:
    ``pipe.load_lora_weights(folder)`` where diffusers can; for the UNet of ``TextToVideoSDPipeline``, which diffusers
    (0.42) cannot give a LoRA (``UNet3DConditionModel`` lacks ``load_lora_adapter``), peft injects the adapter the
    file's ``lora_adapter_metadata`` describes and loads its weights, as ``load_lora_adapter`` does."""
    denoiser = getattr(pipe, "unet", None)
    if denoiser is None or hasattr(denoiser, "load_lora_adapter"):
        pipe.load_lora_weights(str(folder), adapter_name=adapter_name)
        return
    import json

    from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(folder) / WEIGHT_NAME
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads((f.metadata() or {}).get("lora_adapter_metadata", "{}"))
    config = {k[len("unet."):]: v for k, v in meta.items() if k.startswith("unet.")}
    weights = {k[len("unet."):]: v for k, v in load_file(str(path)).items() if k.startswith("unet.")}
    inject_adapter_in_model(LoraConfig(**config), denoiser, adapter_name=adapter_name)
    result = set_peft_model_state_dict(denoiser, weights, adapter_name=adapter_name)
    missing = [k for k in result.missing_keys if ".lora_" in k]
    if result.unexpected_keys or missing:
        raise ValueError(f"{path}: the LoRA weights do not match the UNet (unexpected {result.unexpected_keys[:3]}, "
                         f"missing {missing[:3]})")
