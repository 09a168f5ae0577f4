"""A student of a diffusers teacher written as a diffusers pipeline folder (``DiffusionPipeline.from_pretrained``).

Into ``folder`` (the temporary folder of an export, :func:`vdistill.backbones.export.write_export`):

* ``model_index.json``: the teacher's pipeline class (``WanPipeline``, ``TextToVideoSDPipeline``) and its parts;
* ``transformer/`` or ``unet/``: the student's denoiser with its LoRA adapters merged and a fixed embedded
  guidance scale folded into a bias (:func:`guidance_fold`), in the teacher's config (``config.json`` +
  ``diffusion_pytorch_model*.safetensors``, sharded at 10 GB as diffusers' ``save_pretrained``);
* ``scheduler/``: the scheduler that reproduces the student's sampler in the plain call
  ``pipe(prompt, num_inference_steps=<steps>, guidance_scale=1.0)`` (:mod:`vdistill.diffusion.export_scheduler`);
* ``vae/``, ``text_encoder/``, ``tokenizer/``: the teacher folder's own files, hard-linked when the teacher lives on
  the same file system and the links are allowed, else copied (symlinks of a hub snapshot are followed).

Their entries in ``model_index.json`` are the teacher's ``model_index.json`` ones when it names diffusers or
transformers classes, else the classes vdistill loaded them with.
"""

from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from vdistill.backbones.base import Backbone
from vdistill.diffusion.guidance import guidance_scale_embedding
from vdistill.errors import UserError


@dataclass(frozen=True)
class Family:
    """How a backbone family is a diffusers pipeline: the pipeline class and the denoiser's sub-folder."""

    pipeline: str
    denoiser: str


FAMILIES = {"WanBackbone": Family("WanPipeline", "transformer"),
            "ModelScopeBackbone": Family("TextToVideoSDPipeline", "unet")}
#: the teacher's sub-folders an export links (or copies)
LINKED = ("vae", "text_encoder", "tokenizer")
LIBRARIES = ("diffusers", "transformers")


@dataclass(frozen=True)
class PipelineSummary:
    """What :func:`write_pipeline` wrote: the pipeline and scheduler classes, whether the scheduler is a stock
    diffusers one, how the teacher's parts came over (``hard-linked``, ``copied`` or both) and from where."""

    pipeline: str
    scheduler: str
    stock: bool
    parts: str
    teacher: Path


def family_of(model: Backbone) -> Family | None:
    return FAMILIES.get(type(model).__name__)


def teacher_folder(model: Backbone) -> Path:
    """The diffusers folder the backbone was built from (its recorded ``path``)."""
    path = getattr(model, "_init_args", {}).get("path")
    if path is None or not Path(path).is_dir():
        raise UserError(f"{type(model).__name__} records no teacher folder (path {path!r}): cannot link its "
                        "vae/, text_encoder/ and tokenizer/")
    return Path(path)


def guidance_fold(model: Backbone) -> tuple[str, Tensor] | None:
    """``(name of the linear layer, bias delta [D] float32)``: the fixed embedded guidance scale of a consistency
    student folded into the last linear layer of its time embedding, or ``None`` (no projection or no fixed scale).

    At sampling the guidance input is a constant ``w``, so the hook's addition ``guidance_proj(embed(w))`` to the
    output of :meth:`Backbone.time_embedding` (diffusers' ``TimestepEmbedding``: ``linear_2`` is its last layer,
    no ``post_act`` in Wan or ModelScope) is a constant bias.
    """
    record = getattr(model, "vdistill_sampler", None)
    if model.guidance_proj is None or not record or record.get("guidance") is None:
        return None
    module, _ = model.time_embedding()
    linear = getattr(module, "linear_2", None)
    base = linear.get_base_layer() if hasattr(linear, "get_base_layer") else linear
    if not isinstance(base, nn.Linear) or base.bias is None or getattr(module, "post_act", None) is not None:
        raise UserError(f"{type(model).__name__}: the time embedding {type(module).__name__} does not end in a linear "
                        "layer with a bias, so the guidance projection cannot be folded into the export")
    name = next(n for n, m in model.denoiser.named_modules() if m is module)
    proj = model.guidance_proj
    w = torch.tensor([float(record["guidance"])], device=proj.weight.device)
    with torch.no_grad():
        delta = proj(guidance_scale_embedding(w, proj.in_features).to(proj.weight.dtype))[0].float()
    return f"{name}.linear_2", delta


def denoiser_state(denoiser: nn.Module, fold: tuple[str, Tensor] | None = None) -> dict[str, Tensor]:
    """The denoiser's state dict (CPU) in its own diffusers names: peft LoRA adapters merged as peft's ``merge``
    does (``W + B A * scaling`` per active adapter; the model is left as it is) and ``fold``'s delta added to the
    bias of its layer."""
    state = {k.replace(".base_layer.", "."): v for k, v in denoiser.state_dict().items() if ".lora_" not in k}
    if hasattr(denoiser, "peft_config"):
        from peft.tuners.tuners_utils import BaseTunerLayer

        for name, module in denoiser.named_modules():
            if isinstance(module, BaseTunerLayer):
                base = module.get_base_layer().weight.detach()
                weight = base.float()
                for adapter in module.active_adapters:
                    weight = weight + module.get_delta_weight(adapter).float()
                state[f"{name}.weight"] = weight.to(base.dtype)  # float32 adapters on a bf16 teacher: its dtype
    if fold is not None:
        name, delta = fold
        bias = state[f"{name}.bias"]
        state[f"{name}.bias"] = (bias.float() + delta.to(bias.device)).to(bias.dtype)
    return {k: v.detach().cpu().contiguous() for k, v in state.items()}


def write_denoiser(model: Backbone, folder: Path) -> None:
    """``config.json`` + ``diffusion_pytorch_model*.safetensors`` of the merged, folded denoiser."""
    from huggingface_hub import save_torch_state_dict

    folder.mkdir(parents=True)
    model.denoiser.save_config(str(folder))
    save_torch_state_dict(denoiser_state(model.denoiser, guidance_fold(model)), folder,
                          filename_pattern="diffusion_pytorch_model{suffix}.safetensors", max_shard_size="10GB",
                          metadata={"format": "pt"})


def link_tree(src: Path, dst: Path) -> set[str]:
    """Recreate ``src`` under ``dst`` with hard links to its files (symlinks followed), copying a file where the
    link fails (another file system, protected hard links); returns ``{"hard-linked", "copied"}`` or part of it."""
    ways: set[str] = set()
    for root, _, files in os.walk(src, followlinks=True):
        target = dst / Path(root).relative_to(src)
        target.mkdir(parents=True, exist_ok=True)
        for name in files:
            real = os.path.realpath(os.path.join(root, name))
            try:
                os.link(real, target / name)
                ways.add("hard-linked")
            except OSError:
                shutil.copyfile(real, target / name)
                ways.add("copied")
    return ways


@contextmanager
def _quiet_diffusers():
    """diffusers at error verbosity (``TextToVideoSDPipeline`` warns at every construction that it is deprecated)."""
    from diffusers.utils import logging

    level = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(level)


def model_index(model: Backbone, family: Family, scheduler, teacher: Path) -> dict:
    """The ``model_index.json`` of the export: the pipeline built from the student's parts (what diffusers'
    ``save_pretrained`` would write), the linked parts named as in the teacher's ``model_index.json``."""
    import diffusers

    parts = {family.denoiser: model.denoiser, "scheduler": scheduler, **{p: getattr(model, p) for p in LINKED}}
    with _quiet_diffusers():
        index = json.loads(getattr(diffusers, family.pipeline)(**parts).to_json_string())
    try:
        theirs = json.loads((teacher / "model_index.json").read_text())
    except (OSError, json.JSONDecodeError):
        theirs = {}
    for part in LINKED:
        entry = theirs.get(part) if isinstance(theirs, dict) else None
        if isinstance(entry, list) and len(entry) == 2 and entry[0] in LIBRARIES and isinstance(entry[1], str):
            index[part] = entry
    return index


def write_pipeline(model: Backbone, folder: str | Path) -> PipelineSummary:
    """Write the pipeline parts of ``model`` into ``folder`` (module docstring)."""
    from vdistill.diffusion.export_scheduler import export_scheduler

    family = family_of(model)
    if family is None:
        raise UserError(f"{type(model).__name__} is not a diffusers family (known: {', '.join(FAMILIES)})")
    folder, teacher = Path(folder), teacher_folder(model)
    grid = model.key_timesteps or model.schedule.sampling_timesteps(model.defaults.steps).tolist()
    record = getattr(model, "vdistill_sampler", None)
    scheduler, stock = export_scheduler(model.schedule, grid, record if record and record.get("kind") ==
                                        "consistency" else None)
    write_denoiser(model, folder / family.denoiser)
    scheduler.save_pretrained(str(folder / "scheduler"))
    ways: set[str] = set()
    for part in LINKED:
        ways |= link_tree(teacher / part, folder / part)
    index = model_index(model, family, scheduler, teacher)
    (folder / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    parts = " and ".join(sorted(ways, reverse=True)) or "none"
    return PipelineSummary(family.pipeline, type(scheduler).__name__, stock, parts, teacher)
