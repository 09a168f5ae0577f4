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
"""

from __future__ import annotations

import argparse
from pathlib import Path

from vdistill.backbones.base import Backbone
from vdistill.backbones.io import load_backbone, save_backbone

#: the diffusers sub-folder of each family's denoiser
DIFFUSERS_SUBFOLDER = {"ModelScopeBackbone": "unet", "WanBackbone": "transformer"}


def export_student(ckpt: str | Path, out: str | Path, diffusers: bool = True) -> Backbone:
    """Load ``ckpt`` (adapters merged), write it to ``out`` (module docstring) and return the merged model."""
    model = load_backbone(ckpt)
    out = save_backbone(model, out)
    sub = DIFFUSERS_SUBFOLDER.get(type(model).__name__)
    if diffusers and sub is not None and hasattr(model.denoiser, "save_pretrained"):
        model.denoiser.save_pretrained(str(out / sub))
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
