"""Teachers at their real size without weights: the shipped ``config.json`` files (``vdistill/assets/configs``), built
on the meta device into the same :class:`~vdistill.backbones.base.Backbone` classes a fit loads, so every method the
objectives call (``denoise``, ``decode_latents``, ``latent_shape``, ...) is the real one.

A recipe's teacher folder maps to a shipped config set by its name (``/models/Wan2.1-T2V-1.3B-Diffusers`` ->
``Wan2.1-T2V-1.3B-Diffusers``); ``--teacher-config DIR`` names any other diffusers folder whose ``config.json`` files
to read. The tokenizers are not shipped: text is encoded from token ids of the family's full length (the padded
length every prompt takes), which gives the encoder's true cost.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vdistill.backbones.base import Backbone
from vdistill.errors import UserError

CONFIGS = Path(__file__).resolve().parent.parent / "assets" / "configs"

#: backbone class -> (its module, {part: (library, class)}); the parts its constructor loads
FAMILIES: dict[str, tuple[str, dict[str, tuple[str, str]]]] = {
    "WanBackbone": ("vdistill.backbones.wan", {
        "transformer": ("diffusers", "WanTransformer3DModel"), "vae": ("diffusers", "AutoencoderKLWan"),
        "text_encoder": ("transformers", "UMT5EncoderModel")}),
    "ModelScopeBackbone": ("vdistill.backbones.modelscope", {
        "unet": ("diffusers", "UNet3DConditionModel"), "vae": ("diffusers", "AutoencoderKL"),
        "text_encoder": ("transformers", "CLIPTextModel")}),
    "HunyuanVideoBackbone": ("vdistill.backbones.hunyuan", {
        "transformer": ("diffusers", "HunyuanVideoTransformer3DModel"),
        "vae": ("diffusers", "AutoencoderKLHunyuanVideo"), "text_encoder": ("transformers", "LlamaModel"),
        "text_encoder_2": ("transformers", "CLIPTextModel")}),
}


def shipped_configs() -> list[str]:
    return sorted(p.name for p in CONFIGS.iterdir() if p.is_dir()) if CONFIGS.is_dir() else []


def config_folder(path: str, override: str | None) -> Path:
    """The folder whose ``<part>/config.json`` files describe the teacher at ``path``."""
    if override is not None:
        folder = Path(override).expanduser()
        if not folder.is_dir():
            raise UserError(f"--teacher-config {override!r} is not a folder (a diffusers folder with "
                            "<part>/config.json)")
        return folder
    name = Path(str(path)).name
    if (CONFIGS / name).is_dir():
        return CONFIGS / name
    if Path(str(path)).is_dir():
        return Path(str(path))
    raise UserError(f"no shipped config for teacher {str(path)!r} (folder name {name!r}); shipped: "
                    f"{', '.join(shipped_configs())}; or give --teacher-config DIR (a diffusers folder)")


def read_part_config(folder: Path, part: str) -> dict:
    file = folder / part / "config.json"
    if not file.is_file():
        raise UserError(f"{str(file)!r} does not exist: the teacher's {part} config is needed to build it")
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise UserError(f"{str(file)!r} is not valid JSON: {err}") from None


def build_part(library: str, cls_name: str, config: dict, dtype: torch.dtype, device: str = "meta") -> nn.Module:
    """One part from its config on ``device`` (meta: no memory; else random weights), in ``dtype``."""
    import importlib

    from vdistill.backbones.diffusers_io import quiet_loading_reports

    cls = getattr(importlib.import_module(library), cls_name)
    with torch.device(device), quiet_loading_reports():
        if library == "diffusers":
            model = cls.from_config(config)
        else:
            config_cls = cls.config_class
            model = cls(config_cls.from_dict({k: v for k, v in config.items() if k != "architectures"}))
        return model.to(dtype)


def meta_backbone(spec: Any, teacher_config: str | None = None, device: str = "meta") -> Backbone:
    """The recipe's teacher at real size on the meta device (a shipped toy model: its own weights, moved there); on
    another ``device``, with random weights (``--measure``, and the tests that run a step for real)."""
    from vdistill.backbones.diffusers_io import frozen_load_dtype, resolve_dtype

    if isinstance(spec, str):
        from vdistill.backbones.io import load_backbone

        return load_backbone(spec).to(device).requires_grad_(False)
    name, args = spec.get("class_path", "").rsplit(".", 1)[-1], dict(spec.get("init_args") or {})
    if name == "ToyBackbone":
        from vdistill.backbones.toy import ToyBackbone

        with torch.device(device):
            return ToyBackbone(**args).requires_grad_(False)
    if name not in FAMILIES:
        raise UserError(f"teacher class {name!r} has no meta-device builder; profiled teachers: "
                        f"{', '.join([*FAMILIES, 'ToyBackbone', 'shipped toy names'])}")
    module, parts = FAMILIES[name]
    import importlib

    cls = getattr(importlib.import_module(module), name)
    folder = config_folder(args.get("path", ""), teacher_config)
    dtype = resolve_dtype(args.get("torch_dtype", "float32"))
    vae_dtype = frozen_load_dtype(args.get("vae_dtype"), dtype)
    bb = cls.__new__(cls)
    Backbone.__init__(bb)
    for part, (library, cls_name) in parts.items():
        config = read_part_config(folder, part)
        built = build_part(library, cls_name, config, vae_dtype if part == "vae" else dtype, device)
        setattr(bb, "denoiser" if part in ("transformer", "unet") else part, built)
    finish_family(bb, name, args)
    bb.encode_text = _encode_without_tokenizer.__get__(bb)  # bound: a deep copy (the student) rebinds it
    bb.freeze_frozen_parts()
    bb.denoiser.requires_grad_(False)
    return bb


def finish_family(bb: Backbone, name: str, args: dict) -> None:
    """What each family's constructor sets besides its parts (the schedule from its defaults: the scheduler config
    changes no cost), gradient checkpointing as the recipe asks."""
    if name == "WanBackbone":
        from vdistill.backbones.wan import DEFAULT_SHIFT, FlowSchedule

        bb.schedule = FlowSchedule(shift=DEFAULT_SHIFT)
        bb.max_text_length = int(args.get("max_text_length", 512))
    elif name == "ModelScopeBackbone":
        from vdistill.backbones.modelscope import ddpm_schedule_from_config

        bb.schedule = ddpm_schedule_from_config({})
        bb.max_text_length = int(args.get("max_text_length", 77))
    else:
        from vdistill.backbones.hunyuan import DEFAULT_EMBEDDED_GUIDANCE, DEFAULT_SHIFT
        from vdistill.backbones.wan import FlowSchedule

        bb.schedule = FlowSchedule(shift=DEFAULT_SHIFT)
        bb.max_text_length = int(args.get("max_text_length", 256))
        bb.embedded_guidance = float(args.get("embedded_guidance", DEFAULT_EMBEDDED_GUIDANCE))
        bb._embedded_scale = None
    if args.get("gradient_checkpointing"):
        if name == "ModelScopeBackbone":
            bb.enable_gradient_checkpointing()
        else:
            bb.denoiser.enable_gradient_checkpointing()


def _encode_without_tokenizer(self: Backbone, prompts: list[str]) -> dict[str, torch.Tensor]:
    """The family's text conditioning of ``len(prompts)`` prompts padded to its full length, from zero token ids
    (costs and shapes as the real encoder's; the values are meaningless)."""
    b, kind = len(prompts), type(self).__name__
    dev = next(self.text_encoder.parameters()).device
    with torch.no_grad():
        if kind == "WanBackbone":
            ids = torch.zeros(b, self.max_text_length, dtype=torch.long, device=dev)
            return {"states": self.text_encoder(ids).last_hidden_state}  # no mask: every token kept
        if kind == "ModelScopeBackbone":
            ids = torch.zeros(b, self.max_text_length, dtype=torch.long, device=dev)
            return {"states": self.text_encoder(ids)[0]}
        from vdistill.backbones.hunyuan import CLIP_LENGTH, LLAMA_LAYERS_TO_SKIP, prompt_template

        crop = prompt_template()["crop_start"]
        ids = torch.zeros(b, self.max_text_length + crop, dtype=torch.long, device=dev)
        hidden = self.text_encoder(input_ids=ids, output_hidden_states=True).hidden_states
        pooled = self.text_encoder_2(torch.zeros(b, CLIP_LENGTH, dtype=torch.long, device=dev)).pooler_output
        return {"states": hidden[-(LLAMA_LAYERS_TO_SKIP + 1)][:, crop:],
                "mask": torch.ones(b, self.max_text_length, dtype=torch.long, device=dev), "pooled": pooled}


@contextmanager
def kept_on_meta() -> Iterator[None]:
    """Keep modules built on the meta device there when a library moves them on (open_clip's ``create_model`` ends
    with ``model.to("cpu")``, which cannot copy a meta tensor): ``Module.to`` drops its device for a module whose
    parameters are on meta, and keeps the dtype."""
    original = nn.Module.to

    def to(self, *args, **kwargs):
        device, dtype, _, _ = torch._C._nn._parse_to(*args, **kwargs)
        if device is not None and device.type != "meta" and any(p.is_meta for p in self.parameters()):
            return self if dtype is None else original(self, dtype)
        return original(self, *args, **kwargs)

    nn.Module.to = to
    try:
        yield
    finally:
        nn.Module.to = original


def count(module: nn.Module | None, trainable: bool | None = None) -> int:
    """Parameters of ``module`` (all, or only the trainable / frozen ones)."""
    if module is None:
        return 0
    return sum(p.numel() for p in module.parameters() if trainable is None or p.requires_grad == trainable)


def nbytes(module: nn.Module | None, trainable: bool | None = None) -> int:
    if module is None:
        return 0
    return sum(p.numel() * p.element_size() for p in module.parameters()
               if trainable is None or p.requires_grad == trainable)
