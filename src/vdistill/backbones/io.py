"""Saving and loading backbones: shipped names, diffusers pipeline folders, exported folders and Lightning
checkpoints.

A diffusers pipeline folder (``model_index.json``, as ``save_pretrained`` or a hub snapshot writes it) is a model
name like the others: the pipeline class it names picks the backbone (:mod:`vdistill.backbones.pipelines`), which
loads its parts from the folder.

An exported folder holds ``backbone.yaml`` (``class_path`` + ``init_args``, see :mod:`vdistill.config`) and
``model.safetensors`` (:meth:`Backbone.export_state_dict`: all weights but the frozen parts a diffusers backbone
reloads from its own ``path``). A Lightning checkpoint written by a vdistill module carries the same
config under the key ``vdistill_backbone`` and its weights under a prefix (``backbone.`` or ``student.``).

Besides ``class_path`` + ``init_args`` the config may record what was added to the built model
(:func:`backbone_record`): ``guidance_embedding`` (its width), ``key_timesteps`` (a distilled student's sampling
grid), ``lora`` (rank, alpha, targets of a LoRA student; it is merged into the weights after loading) and
``sampler`` (a consistency student's sampler: ``{kind: consistency, guidance, original_steps, steps}``, so that
``vdistill sample`` uses the multistep consistency sampler and the embedded guidance scale without flags).

A LoRA student's Lightning checkpoint may be adapter-only (``vdistill_teacher`` names the teacher its frozen
weights come from; see :func:`student_from_adapter_checkpoint`).
"""

from __future__ import annotations

from pathlib import Path

import torch
import yaml
from safetensors.torch import save_file

from vdistill.backbones.base import Backbone
from vdistill.backbones.diffusers_io import resolve_dtype
from vdistill.backbones.pipelines import MODEL_INDEX, is_pipeline_folder, pipeline_backbone
from vdistill.checkpoints import load_checkpoint_file, load_strict, read_state_dict
from vdistill.config import check_records, from_config, to_config
from vdistill.errors import UserError

ASSETS = Path(__file__).resolve().parent.parent / "assets"
#: the shipped toy teachers and the best 2-step student of toy-flow (its recipe: assets/toy-flow-2step/TRAINED.md)
SHIPPED = {name: ASSETS / name for name in ("toy-flow", "toy-ddpm", "toy-flow-2step")}
CKPT_PREFIXES = ("student.", "backbone.")


def shipped_models() -> list[str]:
    """The shipped model names whose weights are present in this installation."""
    return [name for name, folder in SHIPPED.items() if (folder / "backbone.yaml").is_file()]


def save_backbone(model: Backbone, folder: str | Path) -> Path:
    """Write ``backbone.yaml`` + ``model.safetensors`` to ``folder`` (atomically per file)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.export_state_dict().items()}
    tmp = folder / "model.safetensors.tmp"
    save_file(state, str(tmp))
    tmp.replace(folder / "model.safetensors")
    (folder / "backbone.yaml").write_text(yaml.safe_dump(backbone_record(model), sort_keys=False))
    return folder


def backbone_record(model: Backbone) -> dict:
    """``class_path`` + ``init_args`` and the additions :func:`build_from_config` replays (module docstring)."""
    extra: dict = {}
    if model.has_guidance_embedding:
        extra["guidance_embedding"] = model.guidance_proj.in_features
    if model.key_timesteps is not None:
        extra["key_timesteps"] = list(model.key_timesteps)
    lora = getattr(model.denoiser, "vdistill_lora", None)
    if lora is not None:
        extra["lora"] = dict(lora)
    sampler = getattr(model, "vdistill_sampler", None)
    if sampler is not None:
        extra["sampler"] = dict(sampler)
    return {**to_config(model), **extra}


#: what :func:`backbone_record` adds to ``class_path`` + ``init_args``
ADDITIONS = ("guidance_embedding", "key_timesteps", "lora", "sampler")


BACKBONES = "backbones"


def build_from_config(cfg: dict, source: str = "model config") -> Backbone:
    """The backbone of a :func:`backbone_record` read from ``source`` (a file: named in errors). Its classes are
    checked against the registry before anything is imported or built (:func:`vdistill.config.resolve_class`)."""
    if not isinstance(cfg, dict):
        raise UserError(f"{source}: the model config is a {type(cfg).__name__}, not a mapping with class_path")
    cfg = dict(cfg)
    additions = check_additions({k: cfg.pop(k, None) for k in ADDITIONS}, source)
    if "class_path" not in cfg:
        raise UserError(f"{source}: the model config has no class_path")
    model = from_config(cfg, source=source, kind=BACKBONES)
    return apply_additions(model, **additions)


def check_additions(additions: dict, source: str) -> dict:
    """The recorded additions, each checked for its type (a wrong one is a one-line error naming ``source``)."""
    g, keys, lora, sampler = (additions[k] for k in ADDITIONS)
    problems = []
    if g is not None and (not isinstance(g, int) or isinstance(g, bool) or g < 1):
        problems.append(f"guidance_embedding {g!r} (expected a positive integer)")
    if keys is not None and (not isinstance(keys, list) or not all(
            isinstance(t, (int, float)) and not isinstance(t, bool) for t in keys)):
        problems.append(f"key_timesteps {keys!r} (expected a list of numbers)")
    if lora is not None and (not isinstance(lora, dict) or not isinstance(lora.get("rank"), int)
                             or set(lora) - {"rank", "alpha", "target_modules"}):
        problems.append(f"lora {lora!r} (expected {{rank: int, alpha, target_modules}})")
    if sampler is not None and not isinstance(sampler, dict):
        problems.append(f"sampler {sampler!r} (expected a mapping)")
    if problems:
        raise UserError(f"{source}: bad model config value: {'; '.join(problems)}")
    return additions


def apply_additions(model: Backbone, guidance_embedding: int | None = None, key_timesteps: list | None = None,
                    lora: dict | None = None, sampler: dict | None = None) -> Backbone:
    """Replay on a built model what :func:`backbone_record` recorded (in place)."""
    if lora:
        from vdistill.backbones.student import apply_lora  # peft only for LoRA students

        apply_lora(model, **lora)
    if guidance_embedding:
        model.enable_guidance_embedding(guidance_embedding)
    if key_timesteps:
        model.set_key_timesteps(key_timesteps)
    if sampler:
        from vdistill.backbones.student import set_consistency_sampling

        if sampler.get("kind") != "consistency":
            raise UserError(f"unknown sampler {sampler.get('kind')!r} in the model config (known: consistency)")
        set_consistency_sampling(model, **{k: v for k, v in sampler.items() if k != "kind"})
    return model


def load_backbone(spec: str | Path, map_location: str | torch.device = "cpu", adapter_only: bool = True,
                  dtype: str | torch.dtype | None = None) -> Backbone:
    """A backbone from a shipped name (``toy-flow``, ``toy-ddpm``), a diffusers pipeline folder (with
    ``model_index.json``, e.g. a snapshot of ``Wan-AI/Wan2.1-T2V-1.3B-Diffusers``), an exported folder or a
    ``.ckpt`` file.

    Files are untrusted: weights are read with safetensors or ``torch.load(weights_only=True)``, and the config
    they carry builds registered classes only (:func:`build_from_config`); a pipeline folder's ``model_index.json``
    is read as data and picks a backbone from :data:`~vdistill.backbones.pipelines.PIPELINE_BACKBONES`.
    ``adapter_only``: accept an adapter-only LoRA checkpoint (the teacher such a checkpoint names may not be one
    itself). ``dtype``: the denoiser's dtype (for the diffusers families also the text encoder's: their
    ``torch_dtype``); ``None`` keeps the model's own (float32 for a pipeline folder).
    """
    spec = str(spec)
    dtype = None if dtype is None else dtype_name(dtype)
    path = SHIPPED.get(spec, Path(spec).expanduser())
    if path.is_dir() and is_pipeline_folder(path) and not (path / "backbone.yaml").is_file():
        # a vdistill export is a pipeline folder too: its backbone.yaml (the student) wins over model_index.json
        model = _load_pipeline_folder(path, dtype)
    elif path.is_dir():
        model = _load_folder(path, spec, dtype)
    elif path.is_file() and path.suffix == ".ckpt":
        ckpt = load_checkpoint_file(path)
        if "vdistill_backbone" not in ckpt:
            raise UserError(f"checkpoint {spec!r} was not written by a vdistill module (no 'vdistill_backbone')")
        if ckpt.get("vdistill_teacher") is not None:  # adapter-only: the frozen weights are the teacher's
            if not adapter_only:
                raise UserError(f"checkpoint {spec!r} is adapter-only; the teacher of an adapter-only checkpoint "
                                "must be a full model (an exported folder, a full checkpoint or a shipped name)")
            return cast_denoiser(student_from_adapter_checkpoint(ckpt, source=spec), dtype).to(map_location).eval()
        model = build_from_config(with_dtype(ckpt["vdistill_backbone"], dtype), source=f"checkpoint {spec!r}")
        state = ckpt.get("state_dict")
        if not isinstance(state, dict):
            raise UserError(f"checkpoint {spec!r} has no state_dict mapping")
        prefix = next((p for p in CKPT_PREFIXES if any(str(k).startswith(p) for k in state)), None)
        if prefix is None:
            raise UserError(f"checkpoint {spec!r} holds no weights under {list(CKPT_PREFIXES)}")
        load_strict(model, {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}, source=spec,
                    expected=set(model.export_state_dict()))
    elif not path.exists():
        raise UserError(f"model {spec!r} does not exist: expected a shipped model ({', '.join(SHIPPED)}), a folder "
                        f"(a diffusers pipeline with {MODEL_INDEX} or a vdistill export with backbone.yaml) or a "
                        ".ckpt file")
    else:
        raise UserError(f"model {spec!r} is a file but not a .ckpt checkpoint: expected a shipped model "
                        f"({', '.join(SHIPPED)}), a folder (a diffusers pipeline or a vdistill export) or a .ckpt file")
    if getattr(model.denoiser, "vdistill_lora", None) is not None:
        from vdistill.backbones.student import merge_lora  # a plain backbone samples faster than base + adapters

        merge_lora(model)
    return cast_denoiser(model, dtype).to(map_location).eval()


def dtype_name(dtype: str | torch.dtype) -> str:
    """The canonical name of a dtype (``"bf16"``, ``torch.bfloat16`` -> ``"bfloat16"``); unknown: one line."""
    return str(resolve_dtype(dtype)).removeprefix("torch.")


def with_dtype(cfg: object, dtype: str | None) -> object:
    """A backbone record whose ``torch_dtype`` (the diffusers families' denoiser and text encoder dtype) is
    ``dtype``: the weights are loaded at that dtype rather than cast after."""
    if dtype is None or not isinstance(cfg, dict) or not isinstance(cfg.get("init_args"), dict) \
            or "torch_dtype" not in cfg["init_args"]:
        return cfg
    return {**cfg, "init_args": {**cfg["init_args"], "torch_dtype": dtype}}


def cast_denoiser(model: Backbone, dtype: str | None) -> Backbone:
    """Cast the denoiser (and a guidance projection, which feeds its time embedding) to ``dtype`` where a model was
    not built at it (the toy one, or the teacher an adapter-only checkpoint names). The modules a diffusers model
    keeps in float32 (``_keep_in_fp32_modules``: Wan's time embedding, norms and modulation) stay so, as in
    ``from_pretrained(torch_dtype=...)``."""
    if dtype is None:
        return model
    target = resolve_dtype(dtype)
    keep = getattr(model.denoiser, "_keep_in_fp32_modules", None) or ()
    tensors = [*model.denoiser.named_parameters(), *model.denoiser.named_buffers()]
    if model.guidance_proj is not None:
        tensors += list(model.guidance_proj.named_parameters())
    for name, tensor in tensors:
        if tensor.is_floating_point() and tensor.dtype != target and not any(m in name.split(".") for m in keep):
            tensor.data = tensor.data.to(target)
    return model


def _load_pipeline_folder(path: Path, dtype: str | None) -> Backbone:
    """The backbone of a diffusers pipeline folder: the class its ``model_index.json`` names picks it, and it
    loads its parts from the folder (``path``, resolved so that records of it work from any directory)."""
    from vdistill import registry

    cls = registry.load(pipeline_backbone(path))
    kwargs = {} if dtype is None else {"torch_dtype": dtype}
    return cls(path=str(path.resolve()), **kwargs)


def _load_folder(path: Path, spec: str, dtype: str | None = None) -> Backbone:
    cfg_file = path / "backbone.yaml"
    if not cfg_file.is_file():
        raise UserError(f"model folder {spec!r} has neither {MODEL_INDEX} (a diffusers pipeline folder, as "
                        "save_pretrained writes it) nor backbone.yaml (a vdistill export)")
    try:
        cfg = yaml.safe_load(cfg_file.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise UserError(f"{str(cfg_file)!r} is not valid YAML: {str(err).splitlines()[0]}") from err
    model = build_from_config(with_dtype(cfg, dtype), source=str(cfg_file))
    weights = path / "model.safetensors"
    load_strict(model, read_state_dict(weights), source=str(weights), expected=set(model.export_state_dict()))
    return model


def student_from_adapter_checkpoint(ckpt: dict, source: str = "checkpoint") -> Backbone:
    """The merged student of an adapter-only Lightning checkpoint (a LoRA student's trainable weights only:
    adapters and guidance projection, under ``student.``; the distillation module writes it so).

    The teacher named by ``ckpt["vdistill_teacher"]`` (a name / path :func:`load_backbone` resolves, or a backbone
    config that reloads its weights from its own folder) gives the frozen weights; the student's record
    (``vdistill_backbone``) gives the adapters' settings, the guidance embedding and the sampling additions.
    """
    from vdistill.backbones.student import make_student, merge_lora  # peft only for LoRA students

    where = f"checkpoint {source!r}"
    spec, record = ckpt["vdistill_teacher"], ckpt["vdistill_backbone"]
    if not isinstance(record, dict) or not isinstance(ckpt.get("state_dict"), dict):
        raise UserError(f"{where}: vdistill_backbone and state_dict must be mappings")
    check_records(record, where)  # the student's own class is not built, but a record naming others is refused
    additions = check_additions({k: record.get(k) for k in ADDITIONS}, where)
    lora = additions["lora"]
    if not lora:
        raise UserError(f"{source} is adapter-only but records no LoRA settings")
    if isinstance(spec, str):
        teacher = load_backbone(spec, adapter_only=False)
    else:
        teacher = build_from_config(spec, source=f"{where} (vdistill_teacher)")
    student = make_student(teacher, "lora", lora["rank"], lora.get("alpha"), lora.get("target_modules"))
    apply_additions(student, **{k: additions[k] for k in ("guidance_embedding", "key_timesteps", "sampler")})
    state = {k[len("student."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("student.")}
    load_strict(student, state, source=source,
                expected={n for n, p in student.named_parameters() if p.requires_grad})
    return merge_lora(student)


def teacher_reference(teacher: str | Backbone) -> str | dict | None:
    """How an adapter-only checkpoint names the teacher its frozen weights come from: a shipped name, an absolute
    path, or the config of a backbone that reloads its weights from its own folder (diffusers teachers); ``None``
    when the weights cannot be rebuilt that way (a backbone object built in code), so the checkpoint must keep
    the student's full weights."""
    if isinstance(teacher, str):
        path = Path(teacher)
        return teacher if teacher in SHIPPED or not path.exists() else str(path.resolve())
    record = backbone_record(teacher)
    return record if "path" in record.get("init_args", {}) and not teacher.has_guidance_embedding else None
