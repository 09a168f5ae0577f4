"""``vdistill export --ckpt PATH --out DIR``: a student checkpoint as a model folder for ``vdistill sample`` and,
for diffusers teachers (Wan, ModelScope), as a diffusers pipeline.

The checkpoint (a Lightning ``.ckpt`` of a distillation run, adapter-only for LoRA students, or anything
:func:`~vdistill.backbones.io.load_backbone` reads) is loaded, its LoRA adapters are merged into the base
weights, and ``DIR`` gets:

* ``backbone.yaml`` + ``model.safetensors``: the vdistill format (:func:`~vdistill.backbones.io.save_backbone`),
  with the student's guidance projection and sampling record (a consistency student samples with
  ``vdistill sample --model DIR`` at its own steps and embedded guidance scale, no extra flags);
* for diffusers teachers, a folder that ``DiffusionPipeline.from_pretrained(DIR)`` loads
  (:mod:`vdistill.backbones.pipeline_export`): ``model_index.json``, the merged student (``transformer/`` or
  ``unet/``) with a fixed embedded guidance scale folded into its time embedding, a ``scheduler/`` that
  reproduces the student's sampler in ``pipe(prompt, num_inference_steps=<steps>, guidance_scale=1.0)``, and the
  teacher's ``vae/``, ``text_encoder/``, ``tokenizer/`` (hard-linked when on the same file system, else copied;
  the printed line says which);
* for LoRA students also ``pytorch_lora_weights.safetensors``: the adapter in the diffusers / peft format, for
  ``pipe.load_lora_weights(DIR)`` on the teacher's pipeline (:mod:`vdistill.backbones.lora_export`).

``DIR`` is written as a temporary folder beside it and renamed into place when complete
(:func:`vdistill.files.atomic_folder`): a failed export (a full disk, Ctrl-C) leaves no empty or half folder and
an earlier ``DIR`` unchanged; errors are one line naming the file. ``DIR`` is replaced as a whole, so a folder
holding anything but an export is refused before the checkpoint is loaded, and so is a diffusers folder that is not
a vdistill export (``model_index.json`` without ``backbone.yaml``: a teacher holds only names an export owns).
"""

from __future__ import annotations

import argparse

from vdistill.backbones.export import export_student
from vdistill.commands.parse_errors import CommandParser


def build_parser() -> argparse.ArgumentParser:
    p = CommandParser(prog="vdistill export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True, help="a distillation .ckpt (adapter-only for LoRA students), or any "
                   "model vdistill sample loads")
    p.add_argument("--out", required=True, help="the folder to write")
    p.add_argument("--no-diffusers", action="store_true", help="write the vdistill format only (no diffusers "
                   "pipeline, no LoRA adapter file)")
    return p


def run(argv: list[str]) -> None:
    args = build_parser().parse_args(argv)
    model, summary = export_student(args.ckpt, args.out, diffusers=not args.no_diffusers)
    sampler = getattr(model, "vdistill_sampler", None)
    how = f"{sampler['kind']} sampler, {model.defaults.steps} steps" if sampler else f"{model.defaults.steps} steps"
    print(f"exported {args.ckpt} -> {args.out} ({type(model).__name__}, {how}; {summary.describe()})")
