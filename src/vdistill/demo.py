"""``vdistill demo``: sample the shipped toy teachers at several step counts and print their ToyBench table.

Writes ``OUT/samples/<model>_<steps>steps/`` (``videos.npz``, mp4s, ``grid.gif``, ``toybench.json``) and
``OUT/toybench.md`` + ``OUT/toybench.json`` with one row per (model, steps).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from vdistill.backbones.io import SHIPPED, load_backbone
from vdistill.sampling.command import write_outputs
from vdistill.sampling.generate import generate
from vdistill.world.captions import toy_prompts
from vdistill.world.toybench import format_table


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vdistill demo", description=__doc__)
    p.add_argument("--out", default="runs/demo", help="output folder")
    p.add_argument("--models", nargs="+", default=list(SHIPPED), help="models to sample")
    p.add_argument("--steps", nargs="+", type=int, default=[50, 4], help="step counts")
    p.add_argument("--repeat", type=int, default=2, help="videos per toy prompt (48 prompts)")
    p.add_argument("--seed", type=int, default=0)
    return p


def run(argv: list[str]) -> dict[str, dict]:
    args = build_parser().parse_args(argv)
    out = Path(args.out)
    prompts = [p for p in toy_prompts() for _ in range(args.repeat)]
    rows: dict[str, dict] = {}
    for name in args.models:
        model = load_backbone(name)
        for steps in args.steps:
            label = f"{name} {steps} steps + CFG {model.defaults.cfg:g}"
            print(f"sampling {label} ({len(prompts)} videos)")
            gen = generate(model, prompts, steps=steps, seed=args.seed, batch_size=48)
            overall = write_outputs(gen, out / "samples" / f"{name}_{steps}steps", fps=model.defaults.fps, mp4=8,
                                    label=label)
            rows[label] = {**overall, "steps": steps, "time (s)": gen.seconds}
    table = format_table(rows)
    out.mkdir(parents=True, exist_ok=True)
    (out / "toybench.md").write_text(table + "\n")
    (out / "toybench.json").write_text(json.dumps(rows, indent=2))
    print(table)
    print(f"\nsamples (GIF grids, mp4, videos.npz) under {out}/samples/; table in {out}/toybench.md")
    return rows
