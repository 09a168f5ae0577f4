"""The student: a copy of the teacher, fully fine-tuned or with LoRA adapters (peft) on its denoiser.

The frozen parts (text encoder, VAE) are shared with the teacher, not copied. A LoRA student records its
adapter settings on ``student.denoiser.vdistill_lora``; exports and checkpoints carry that record, and
:func:`vdistill.backbones.io.load_backbone` re-injects the adapters, loads the weights and merges them
(:func:`merge_lora`), so ``vdistill sample`` sees a plain backbone. The distillation module's checkpoints of a
LoRA student are adapter-only (adapters + guidance projection, and a reference to the teacher:
:func:`~vdistill.backbones.io.teacher_reference`, :func:`~vdistill.backbones.io.student_from_adapter_checkpoint`).
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn

from vdistill.backbones.base import Backbone
from vdistill.errors import UserError

#: default LoRA targets per family: (layer types, name prefix(es) inside the denoiser); other families: all Linear
LORA_DEFAULTS: dict[str, tuple[tuple[type, ...], str | tuple[str, ...]]] = {
    "ToyBackbone": ((nn.Linear, nn.Conv2d), ""),
    # T2V-Turbo: LoRA on all Linear / Conv layers of the ModelScope UNet
    "ModelScopeBackbone": ((nn.Linear, nn.Conv2d), ""),
    # attention projections and FFNs of the DiT blocks (the usual Wan LoRA targets)
    "WanBackbone": ((nn.Linear,), "blocks."),
    # every Linear of the dual- and single-stream blocks (musubi-tuner's HunyuanVideo LoRA)
    "HunyuanVideoBackbone": ((nn.Linear,), ("transformer_blocks.", "single_transformer_blocks.")),
}


@dataclass
class StudentConfig:
    """How :func:`make_student` builds the student (``model.student`` in YAML).

    Args:
        mode: ``full`` (fine-tune the whole denoiser, as AccVideo) or ``lora``.
        lora_rank, lora_alpha: LoRA rank and scale numerator (``None``: alpha = rank).
        target_modules: peft ``target_modules`` (names, matched as suffixes, or one regex); ``None``: the family
            default of :data:`LORA_DEFAULTS`.
        guidance_embedding: add the trainable guidance-scale embedding (students fed an embedded guidance scale).
        gradient_checkpointing: recompute the student denoiser's block activations in the backward pass (less
            activation memory for about one more forward of compute; the frozen teacher is left as it is).
        checkpoint_every: with ``gradient_checkpointing``, recompute only every k-th block (blocks ``0, k, 2k,
            ...`` of the family's ``feature_blocks``; 1: all): selective activation checkpointing, a middle point
            between memory and compute (:meth:`~vdistill.backbones.base.Backbone.enable_gradient_checkpointing`).
    """

    mode: str = "full"
    lora_rank: int = 64
    lora_alpha: float | None = None
    target_modules: list[str] | str | None = None
    guidance_embedding: bool = False
    gradient_checkpointing: bool = False
    checkpoint_every: int = 1


def default_lora_targets(model: Backbone) -> str:
    """A regex matching exactly the family's default LoRA targets (see :data:`LORA_DEFAULTS`)."""
    types, prefix = LORA_DEFAULTS.get(type(model).__name__, ((nn.Linear,), ""))
    names = [n for n, m in model.denoiser.named_modules() if isinstance(m, types) and n.startswith(prefix)]
    if not names:
        raise UserError(f"{type(model).__name__} has no default LoRA targets; set model.student.target_modules")
    return "|".join(re.escape(n) for n in names)


def apply_lora(model: Backbone, rank: int = 64, alpha: float | None = None,
               target_modules: list[str] | str | None = None) -> Backbone:
    """Inject LoRA adapters (zero-initialised B: the model is unchanged) into ``model.denoiser`` in place and
    make them the denoiser's only trainable parameters."""
    from peft import LoraConfig, inject_adapter_in_model

    targets = default_lora_targets(model) if target_modules is None else target_modules
    config = LoraConfig(r=int(rank), lora_alpha=float(rank if alpha is None else alpha), target_modules=targets,
                        lora_dropout=0.0)
    try:
        inject_adapter_in_model(config, model.denoiser)
    except ValueError as err:  # peft's message names the targets it could not find
        raise UserError(f"cannot put LoRA on {type(model).__name__}: {err}") from err
    for name, p in model.denoiser.named_parameters():
        p.requires_grad_("lora_" in name)
    model.denoiser.vdistill_lora = {"rank": int(rank), "alpha": alpha, "target_modules": target_modules}
    return model


def is_lora(model: Backbone) -> bool:
    return getattr(model.denoiser, "vdistill_lora", None) is not None


def merge_lora(model: Backbone) -> Backbone:
    """Fold the adapters into the base weights and remove them (peft's ``merge_and_unload`` for a model the
    adapters were injected into): ``model`` becomes a plain backbone, in place."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    denoiser = model.denoiser
    for name, module in list(denoiser.named_modules()):
        if isinstance(module, BaseTunerLayer):
            module.merge()
            parent, _, child = name.rpartition(".")
            setattr(denoiser.get_submodule(parent) if parent else denoiser, child, module.get_base_layer())
    for attr in ("peft_config", "vdistill_lora"):
        if hasattr(denoiser, attr):
            delattr(denoiser, attr)
    return model


def lora_state_dict(model: Backbone) -> dict[str, Tensor]:
    """Adapter weights only (peft's names without the adapter name, under ``denoiser.``) plus the guidance
    projection when the student has one: what a LoRA student adds to its teacher."""
    from peft import get_peft_model_state_dict

    state = {f"denoiser.{k}": v for k, v in get_peft_model_state_dict(model.denoiser).items()}
    if model.guidance_proj is not None:
        state.update({f"guidance_proj.{k}": v for k, v in model.guidance_proj.state_dict().items()})
    return state


def load_lora_state_dict(model: Backbone, state: dict[str, Tensor]) -> None:
    """Load what :func:`lora_state_dict` returned into a LoRA student made from the same teacher."""
    from peft import set_peft_model_state_dict

    adapters = {k[len("denoiser."):]: v for k, v in state.items() if k.startswith("denoiser.")}
    try:
        result = set_peft_model_state_dict(model.denoiser, adapters)
    except RuntimeError as err:  # torch's size-mismatch report (another rank or other targets)
        raise UserError(f"adapter weights do not match this student: {str(err).splitlines()[-1].strip()}") from err
    unexpected = list(getattr(result, "unexpected_keys", []))
    missing = [k for k in getattr(result, "missing_keys", []) if "lora_" in k]
    if unexpected or missing:
        raise UserError(f"adapter weights do not match this student: unexpected {unexpected[:5]}, "
                        f"missing {missing[:5]}")
    proj = {k[len("guidance_proj."):]: v for k, v in state.items() if k.startswith("guidance_proj.")}
    if proj:
        if model.guidance_proj is None:
            raise UserError("the adapter weights carry a guidance projection but this student has none")
        model.guidance_proj.load_state_dict(proj)


def make_student(teacher: Backbone, mode: str = "full", lora_rank: int = 64, lora_alpha: float | None = None,
                 target_modules: list[str] | str | None = None, guidance_embedding: bool = False,
                 gradient_checkpointing: bool = False, checkpoint_every: int = 1) -> Backbone:
    """A student made from ``teacher`` (see :class:`StudentConfig` for the arguments).

    The teacher's frozen parts (text encoder, VAE) are shared, not copied; the denoiser is a deep copy whose
    trainable parameters are: all of them (``full``) or the LoRA adapters (``lora``), plus the guidance
    projection when ``guidance_embedding``.
    """
    if mode not in ("full", "lora"):
        raise UserError(f"student mode {mode!r} is not known; choose 'full' or 'lora'")
    if checkpoint_every != 1 and not gradient_checkpointing:
        raise UserError(f"checkpoint_every: {checkpoint_every} selects the blocks gradient checkpointing recomputes: "
                        "set gradient_checkpointing: true, or leave checkpoint_every at 1")
    student = copy.deepcopy(teacher, memo={id(m): m for m in teacher.frozen_parts()})
    for module in student.modules():  # a compiled teacher's compiled call runs the TEACHER's module: not copied
        if getattr(module, "_compiled_call_impl", None) is not None:
            module._compiled_call_impl = None
    if student.guidance_proj is not None:
        # the copied forward hook still closes over the teacher: re-register it on the student
        module, _ = student.time_embedding()
        del module._forward_hooks[student._guidance_hook.id]
        proj, student.guidance_proj = student.guidance_proj, None
        student.enable_guidance_embedding(proj.in_features).load_state_dict(proj.state_dict())
    student.requires_grad_(False)
    if mode == "full":
        student.denoiser.requires_grad_(True)
    else:
        apply_lora(student, lora_rank, lora_alpha, target_modules)
    if guidance_embedding or student.guidance_proj is not None:
        student.enable_guidance_embedding().requires_grad_(True)
    if mode == "lora":
        upcast_trainable(student)
    if gradient_checkpointing:
        student.enable_gradient_checkpointing(checkpoint_every)
    return student.train()


def upcast_trainable(student: Backbone) -> None:
    """Keep a LoRA student's trainable weights (adapters, guidance projection) in float32 when its teacher is in
    half precision, as diffusers' LoRA training scripts do (``cast_training_params``): an AdamW step of ~1e-5 is
    below bf16's resolution for any weight above ~2.6e-3, so bf16 adapters would hardly train. peft casts each
    adapter's input to its dtype and its output back; the guidance hook casts likewise."""
    from diffusers.training_utils import cast_training_params

    if any(p.requires_grad and p.dtype in (torch.float16, torch.bfloat16) for p in student.parameters()):
        cast_training_params(student, dtype=torch.float32)


def hold_frozen_in(module: nn.Module, dtype: torch.dtype, skip: tuple[nn.Module, ...] = ()) -> None:
    """Keep ``module``'s frozen weights in ``dtype`` (bf16: half the bytes) and its trainable ones in float32, in
    place: a sub-module with parameters none of which is trained is cast whole (``.to(dtype)``, floating buffers
    included, as a pipeline's ``.to(torch.bfloat16)``); one with trainable parameters keeps its buffers and
    parameter-free children (a full student's rotary tables) and gets each own frozen parameter cast, each
    trainable one upcast to float32 (diffusers' ``cast_training_params``). Sub-modules in ``skip`` (a VAE kept in
    its configured dtype) are left as they are."""
    if any(module is m for m in skip):
        return
    params = list(module.parameters())
    if not params:
        return
    if not any(p.requires_grad for p in params) and not any(m is s for m in module.modules() for s in skip):
        module.to(dtype)
        return
    for p in module.parameters(recurse=False):
        target = torch.float32 if p.requires_grad else dtype
        if p.is_floating_point() and p.dtype != target:
            p.data = p.data.to(target)
    for child in module.children():
        hold_frozen_in(child, dtype, skip)


#: T2V-Turbo's sampling defaults: 4 steps at the embedded guidance scale 7.5 (LCM convention)
DEFAULT_STEPS = 4
DEFAULT_GUIDANCE = 7.5


def set_consistency_sampling(model: Backbone, guidance: float = DEFAULT_GUIDANCE, original_steps: int = 50,
                             steps: int = DEFAULT_STEPS) -> Backbone:
    """Mark ``model`` as a consistency student: it samples with
    :func:`~vdistill.sampling.consistency.sample_consistency` on the ``original_steps`` grid, ``steps`` steps and
    embedded guidance ``guidance`` by default, without CFG."""
    model.vdistill_sampler = {"kind": "consistency", "guidance": float(guidance),
                              "original_steps": int(original_steps), "steps": int(steps)}
    model.defaults = replace(model.defaults, steps=int(steps), cfg=1.0)
    return model


def consistency_sampling(model: Backbone) -> dict | None:
    """The consistency-sampling record of a student (``None`` for any other model)."""
    record = getattr(model, "vdistill_sampler", None)
    return record if record is not None and record.get("kind") == "consistency" else None
