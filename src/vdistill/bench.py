"""``vdistill bench ROWS.yaml``: sample several models on the same prompts and compare them in one table.

The YAML lists rows (``name``, ``model``, optional ``steps``, ``cfg``, ``guidance``) and where to write::

    out: runs/toy/accvideo
    prompts: toy          # or a prompt file
    repeat: 4             # videos per prompt
    reference: teacher-50 # speed-ups are measured against this row, in the same run
    device: cpu           # or cuda (--device overrides); mp4: 8 mp4s per row (0: none)
    rows:
      - {name: teacher-50, model: toy-flow, steps: 50}
      - {name: student-m2, model: runs/toy/accvideo/m2_traj_adv/export}

Each row's samples go to ``OUT/samples/<name>/`` (``videos.npz`` in the ``vdistill sample`` format, mp4s,
``grid.gif``, ``toybench.json``); the table to ``OUT/toybench.md`` and ``OUT/toybench.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import yaml

from vdistill.backbones.io import load_backbone
from vdistill.data.prompts import load_prompts
from vdistill.errors import UserError
from vdistill.sampling.command import write_outputs
from vdistill.sampling.generate import generate
from vdistill.world.toybench import format_table

ROW_KEYS = {"name", "model", "steps", "cfg", "guidance"}


def check_rows(rows: list[dict], reference: str | None) -> None:
    names = [r.get("name") for r in rows]
    for r in rows:
        if not {"name", "model"} <= set(r) or set(r) - ROW_KEYS:
            raise UserError(f"bench row {r} needs 'name' and 'model' and may have {sorted(ROW_KEYS)}")
    if len(set(names)) != len(names):
        raise UserError(f"bench row names must be unique, got {names}")
    if reference is not None and reference not in names:
        raise UserError(f"reference row {reference!r} is not one of the rows {names}")


def run_bench(rows: list[dict], out: str | Path, prompts: str = "toy", repeat: int = 1, seed: int = 0,
              reference: str | None = None, batch_size: int = 48, device: str = "cpu",
              mp4: int = 8) -> dict[str, dict]:
    """Sample every row on the same prompts and seeds; return ``{row name: ToyBench overall + timing}``.

    ``device``: where every row samples (``cpu``, ``cuda``, ``cuda:1``); ``mp4``: mp4s written per row (0: none).
    """
    check_rows(rows, reference)
    out = Path(out)
    prompt_list = load_prompts(prompts, repeat=repeat)
    results: dict[str, dict] = {}
    for row in rows:
        model = load_backbone(row["model"], map_location=device)
        steps = row.get("steps") or model.defaults.steps
        cfg = row.get("cfg", model.defaults.cfg)
        print(f"[{row['name']}] {row['model']}: {len(prompt_list)} videos, {steps} steps, cfg {cfg}")
        gen = generate(model, prompt_list, steps=steps, cfg=cfg, guidance=row.get("guidance"), seed=seed,
                       batch_size=batch_size)
        overall = write_outputs(gen, out / "samples" / row["name"], fps=model.defaults.fps, mp4=mp4,
                                label=row["name"]) or {}
        results[row["name"]] = {**overall, "steps": steps, "cfg": cfg, "time (s)": gen.seconds,
                                "model": str(row["model"])}
    if reference is not None:
        base = results[reference]["time (s)"]
        for r in results.values():
            r["speed-up"] = base / r["time (s)"]
    out.mkdir(parents=True, exist_ok=True)
    table = format_table({k: {c: v for c, v in r.items() if c != "model"} for k, r in results.items()})
    (out / "toybench.md").write_text(table + "\n")
    (out / "toybench.json").write_text(json.dumps(results, indent=2))
    print(table)
    return results


def run(argv: list[str]) -> dict[str, dict]:
    p = argparse.ArgumentParser(prog="vdistill bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("rows", help="the YAML file of rows (see above)")
    p.add_argument("--out", default=None, help="override the YAML's output folder")
    p.add_argument("--device", default=None, help="override the YAML's device (default cpu): cpu, cuda, cuda:N")
    p.add_argument("--mp4", type=int, default=None, help="override the YAML's mp4s per row (default 8; 0: none)")
    p.add_argument("--rows", nargs="+", metavar="NAME", default=None, dest="only_rows",
                   help="sample only these rows of the file (the reference row, if any, must be one of them)")
    args = p.parse_args(argv)
    path = Path(args.rows)
    if not path.is_file():
        raise UserError(f"bench file {args.rows!r} does not exist")
    spec = yaml.safe_load(path.read_text()) or {}
    valid = {"out", "prompts", "repeat", "seed", "reference", "rows", "batch_size", "device", "mp4"}
    if set(spec) - valid:
        raise UserError(f"unknown keys {sorted(set(spec) - valid)} in {args.rows}; valid: {', '.join(sorted(valid))}")
    device = args.device or spec.get("device", "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"bench device {device!r}: no CUDA GPU is visible here; use --device cpu")
    rows = spec.get("rows", [])
    if args.only_rows:
        names = [r.get("name") for r in rows]
        unknown_rows = [n for n in args.only_rows if n not in names]
        if unknown_rows:
            raise UserError(f"--rows {unknown_rows} are not rows of {path}; its rows: {names}")
        rows = [r for r in rows if r.get("name") in args.only_rows]
    return run_bench(rows, args.out or spec.get("out", "runs/bench"), spec.get("prompts", "toy"),
                     spec.get("repeat", 1), spec.get("seed", 0), spec.get("reference"), spec.get("batch_size", 48),
                     device, spec.get("mp4", 8) if args.mp4 is None else args.mp4)
