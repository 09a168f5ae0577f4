"""``vdistill demo``: sample the shipped toy teachers at several step counts and print their ToyBench table.

Writes ``OUT/samples/<model>_<steps>steps/`` (``videos.npz``, mp4s, ``grid.gif``, ``toybench.json``) and
``OUT/toybench.md`` + ``OUT/toybench.json`` with one row per (model, steps), speed-ups against the first row.
"""

from __future__ import annotations

import argparse

from vdistill.backbones.io import SHIPPED, shipped_models
from vdistill.bench import run_bench


def run(argv: list[str]) -> dict[str, dict]:
    p = argparse.ArgumentParser(prog="vdistill demo", description=__doc__)
    p.add_argument("--out", default="runs/demo", help="output folder")
    p.add_argument("--models", nargs="+", default=None,
                   help=f"models to sample (default: the shipped ones present: {', '.join(SHIPPED)})")
    p.add_argument("--steps", nargs="+", type=int, default=[50, 4], help="step counts")
    p.add_argument("--repeat", type=int, default=2, help="videos per toy prompt (48 prompts)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.models is None:
        args.models = shipped_models()
        missing = sorted(set(SHIPPED) - set(args.models))
        if missing:
            print(f"note: shipped teacher(s) {', '.join(missing)} are not in this installation (make teachers)")
    rows = [{"name": f"{m}_{s}steps", "model": m, "steps": s} for m in args.models for s in args.steps]
    results = run_bench(rows, args.out, "toy", args.repeat, args.seed, reference=rows[0]["name"])
    print(f"\nsamples (GIF grids, mp4, videos.npz) under {args.out}/samples/; table in {args.out}/toybench.md")
    return results
