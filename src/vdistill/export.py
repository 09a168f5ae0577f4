"""``vdistill export --ckpt PATH --out DIR``: a student checkpoint as a plain model folder for ``vdistill sample``.

The checkpoint (a Lightning ``.ckpt`` of a distillation run, adapter-only for LoRA students, or anything
:func:`~vdistill.backbones.io.load_backbone` reads) is loaded, its LoRA adapters are merged into the base
weights, and ``DIR`` gets:

* ``backbone.yaml`` + ``model.safetensors``: the vdistill format (:func:`~vdistill.backbones.io.save_backbone`),
  with the student's guidance projection and sampling record (a consistency student samples with
  ``vdistill sample --model DIR --steps 4`` and its embedded guidance scale, no extra flags);
* for diffusers teachers (ModelScope, Wan) also the merged denoiser in the diffusers layout, ``unet/`` or
  ``transformer/`` (``save_pretrained``), for tools that read diffusers folders. Its config is the teacher's:
  the guidance projection has no slot in diffusers' ``UNet3DConditionModel`` (ours is added to the output of the
  time embedding, diffusers' ``time_cond_proj_dim`` to its input), so it stays in ``model.safetensors``
  (``guidance_proj.weight`` ``[D, 256]``). The VAE, text encoder and tokenizer are the teacher's folder's.

``DIR`` is written as a temporary folder beside it and renamed into place when complete
(:func:`vdistill.files.atomic_folder`): a failed export (a full disk, Ctrl-C) leaves no empty or half folder and
an earlier ``DIR`` unchanged; errors are one line naming the file. ``DIR`` is replaced as a whole, so a folder
holding anything but an export is refused before the checkpoint is loaded.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from safetensors import SafetensorError

from vdistill.backbones.base import Backbone
from vdistill.backbones.io import load_backbone, save_backbone
from vdistill.errors import UserError
from vdistill.files import atomic_folder, check_replaceable, naming

#: the diffusers sub-folder of each family's denoiser
DIFFUSERS_SUBFOLDER = {"ModelScopeBackbone": "unet", "WanBackbone": "transformer"}
#: what an export folder holds (``*.tmp``: a temporary weights file an older vdistill may have left)
EXPORT_FILES = ("backbone.yaml", "model.safetensors", "model.safetensors*.tmp", *DIFFUSERS_SUBFOLDER.values())


def write_export(model: Backbone, out: str | Path, diffusers: bool = True) -> Path:
    """Write ``model`` to the folder ``out`` atomically: ``backbone.yaml`` + ``model.safetensors`` and (``diffusers``,
    diffusers families) the denoiser's diffusers folder."""
    out = Path(out)
    with atomic_folder(out, EXPORT_FILES) as tmp:
        try:
            with naming(tmp / "model.safetensors"):  # the weights are the only file written without a name
                save_backbone(model, tmp)
        except SafetensorError as err:  # safetensors reports a full disk as its own error, without the path
            raise UserError(f"cannot write {str(out / 'model.safetensors')!r}: {err}") from err
        sub = DIFFUSERS_SUBFOLDER.get(type(model).__name__)
        if diffusers and sub is not None and hasattr(model.denoiser, "save_pretrained"):
            try:
                model.denoiser.save_pretrained(str(tmp / sub))
            except SafetensorError as err:
                raise UserError(f"cannot write {str(out / sub)!r}: {err}") from err
    return out


def export_student(ckpt: str | Path, out: str | Path, diffusers: bool = True) -> Backbone:
    """Load ``ckpt`` (adapters merged), write it to ``out`` (module docstring) and return the merged model."""
    check_replaceable(out, EXPORT_FILES, "export folder")
    model = load_backbone(ckpt)
    write_export(model, out, diffusers=diffusers)
    return model


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vdistill export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True, help="a distillation .ckpt (adapter-only for LoRA students), or any "
                   "model vdistill sample loads")
    p.add_argument("--out", required=True, help="the folder to write")
    p.add_argument("--no-diffusers", action="store_true", help="skip the diffusers-layout copy of the denoiser")
    return p


def run(argv: list[str]) -> None:
    args = build_parser().parse_args(argv)
    model = export_student(args.ckpt, args.out, diffusers=not args.no_diffusers)
    sampler = getattr(model, "vdistill_sampler", None)
    how = f"{sampler['kind']} sampler, {model.defaults.steps} steps" if sampler else f"{model.defaults.steps} steps"
    print(f"exported {args.ckpt} -> {args.out} ({type(model).__name__}, {how})")
