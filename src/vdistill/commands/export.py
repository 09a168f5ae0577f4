"""``vdistill export --ckpt PATH --out DIR``: a student checkpoint as a model folder for ``vdistill sample`` and,
for diffusers teachers (Wan, ModelScope), as a diffusers pipeline; for LoRA students also the adapter file for
``pipe.load_lora_weights(DIR)``. What the folder holds, and why it is written atomically:
:mod:`vdistill.backbones.export`.
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
