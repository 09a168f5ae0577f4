"""``vdistill bench ROWS.yaml``: sample several models on the same prompts and compare them in one table.

The YAML lists rows (``name``, ``model``, optional ``steps``, ``cfg``, ``guidance``, ``dtype``, ``frames``,
``height``, ``width``) and where to write::

    out: runs/toy/accvideo
    prompts: toy          # or a prompt file
    repeat: 4             # videos per prompt
    reference: teacher-50 # speed-ups are measured against this row, in the same run
    device: cpu           # or cuda (--device overrides); mp4: 8 mp4s per row (0: none)
    rows:
      - {name: teacher-50, model: toy-flow, steps: 50}
      - {name: student-m2, model: runs/toy/accvideo/m2_traj_adv/export}

A row's ``model`` is anything ``vdistill sample --model`` takes, a diffusers pipeline folder included; ``dtype``
(its denoiser's), ``frames``, ``height`` and ``width`` (the video size in pixels) default to the file-level keys of
the same names, then to the model's own (Wan: 81 x 480 x 832)::

    dtype: bfloat16
    frames: 33
    rows:
      - {name: wan-50, model: /models/Wan2.1-T2V-1.3B-Diffusers, height: 480, width: 832}

Each row's samples go to ``OUT/samples/<name>/`` (``videos.npz`` in the ``vdistill sample`` format, mp4s,
``grid.gif``, ``toybench.json``); the table to ``OUT/toybench.md`` and ``OUT/toybench.json``.

With toy prompts and ``repeat`` >= 2 each row has a ``diversity`` (:mod:`vdistill.world.toybench`): its spread of
the object's start position and size over each prompt's seeds, over the ``reference`` row's (1.0 for that row by
construction), or over rendered clips' when the file names no reference. With a ``reference`` each toy row also
has ``semantic vs ref`` and ``quality vs ref``: its paired difference from the reference row, video for video on
the same prompts and seeds, +/- its standard error (``toybench.json``: ``semantic diff``, ``semantic diff se``, and
``semantic se``, the error of the row's own mean; the same for quality). ``toybench.json`` also keeps, per row,
``diversity se`` (its jackknife standard error over prompts), ``diversity reference`` (which one), ``diversity
(data)`` and its ``se`` (against rendered clips, as ``vdistill sample`` reports it and each row's own
``toybench.json`` keeps it) and the ``spread`` itself; ``n/a`` (``null``) with ``repeat: 1``.

The file and every value in it are checked before any model is loaded (one line naming the file and the key).
Each row is written into a temporary folder beside ``OUT/samples/<name>``; the folders are swapped in only once
every row has been sampled and written, then the two tables are written atomically (temporary file + rename). A
run that fails leaves the earlier samples and tables as they were (:mod:`vdistill.files`).
"""

from __future__ import annotations

import argparse
import json
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import torch
import yaml

from vdistill.backbones.io import dtype_name, load_backbone
from vdistill.commands.parse_errors import CommandParser
from vdistill.commands.sample import SAMPLE_FILES, check_int, check_seed, write_samples
from vdistill.data.prompts import check_repeat, load_prompts
from vdistill.errors import UserError
from vdistill.files import atomic_folder, atomic_write_text, check_replaceable, read_text
from vdistill.sampling.generate import generate, video_size
from vdistill.world.toybench import (
    DATA_REFERENCE,
    METRICS,
    Spread,
    data_spread,
    format_table,
    paired_difference,
    relative_diversity,
    spread_of,
)

#: the metrics whose paired differences from the reference row the table shows
PAIRED = ("semantic", "quality")

#: what a row and, as the rows' default, the file may set about the model and its videos
MODEL_KEYS = ("dtype", "frames", "height", "width")
ROW_KEYS = {"name", "model", "steps", "cfg", "guidance", *MODEL_KEYS}
SPEC_KEYS = {"out", "prompts", "repeat", "seed", "reference", "rows", "batch_size", "device", "mp4", *MODEL_KEYS}


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_rows(rows: object, reference: str | None, source: str = "bench") -> None:
    """Each row a mapping with a unique ``name`` (a folder name) and a ``model``, optional ``steps`` (>= 1),
    ``cfg`` and ``guidance`` (numbers); ``reference`` one of the names. ``source``: the file, for the message."""
    if not isinstance(rows, list) or not rows:
        raise UserError(f"{source}: 'rows' must be a non-empty list of rows {{name, model, ...}}, got {rows!r}")
    for r in rows:
        if not isinstance(r, dict):
            raise UserError(f"{source}: each bench row must be a mapping {{name, model, ...}}, got {r!r}")
        if not {"name", "model"} <= set(r) or set(r) - ROW_KEYS:
            raise UserError(f"bench row {r} needs 'name' and 'model' and may have {sorted(ROW_KEYS)}")
        name = r["name"]
        if not isinstance(name, str) or not name or name.startswith(".") or any(c in name for c in "/\\\0"):
            raise UserError(f"{source}: bench row name {name!r} must be a folder name (no '/', not starting with "
                            "'.'): it names OUT/samples/<name>")
        if not isinstance(r["model"], str) or not r["model"]:
            raise UserError(f"{source}: 'model' of row {name!r} must be a shipped model name or a path, "
                            f"got {r['model']!r}")
        check_int(r.get("steps"), f"{source}: 'steps' of row {name!r}", 1, optional=True)
        for key in ("cfg", "guidance"):
            if r.get(key) is not None and not _number(r[key]):
                raise UserError(f"{source}: {key!r} of row {name!r} must be a number, got {r[key]!r}")
        check_model_keys(r, f"{source}: row {name!r}")
    names = [r["name"] for r in rows]
    if len(set(names)) != len(names):
        raise UserError(f"bench row names must be unique, got {names}")
    if reference is not None and reference not in names:
        raise UserError(f"reference row {reference!r} is not one of the rows {names}")


def check_model_keys(spec: dict, where: str) -> None:
    """``dtype`` a known dtype name, ``frames``, ``height``, ``width`` integers >= 1 (each optional)."""
    for key in ("frames", "height", "width"):
        check_int(spec.get(key), f"{where}: {key!r}", 1, optional=True)
    if spec.get("dtype") is not None:
        if not isinstance(spec["dtype"], str):
            raise UserError(f"{where}: 'dtype' must be a dtype name such as bfloat16, got {spec['dtype']!r}")
        try:
            dtype_name(spec["dtype"])
        except UserError as err:
            raise UserError(f"{where}: {err}") from None


def row_settings(row: dict, defaults: dict | None) -> dict:
    """The row's ``dtype``, ``frames``, ``height``, ``width``: its own, else the file's (``defaults``), else None."""
    return {k: row.get(k, (defaults or {}).get(k)) for k in MODEL_KEYS}


def run_bench(rows: list[dict], out: str | Path, prompts: str = "toy", repeat: int = 1, seed: int = 0,
              reference: str | None = None, batch_size: int = 48, device: str = "cpu",
              mp4: int = 8, source: str = "bench", defaults: dict | None = None) -> dict[str, dict]:
    """Sample every row on the same prompts and seeds; return ``{row name: ToyBench overall + timing}``.

    ``device``: where every row samples (``cpu``, ``cuda``, ``cuda:1``); ``mp4``: mp4s written per row (0: none,
    -1: all); ``source``: the bench file, named in errors; ``defaults``: the file-level ``dtype``, ``frames``,
    ``height``, ``width`` of the rows that do not set their own. Every argument is checked before a model is
    loaded, each row's video size against its model once it is loaded, before it samples.
    """
    check_rows(rows, reference, source)
    check_model_keys(defaults or {}, source)
    check_repeat(repeat, f"{source}: 'repeat'")
    check_int(batch_size, f"{source}: 'batch_size'", 1)
    check_int(mp4, f"{source}: 'mp4'", -1)
    out = Path(out)
    prompt_list = load_prompts(prompts, repeat=repeat)
    check_seed(seed, len(prompt_list), f"{source}: 'seed'")
    if out.exists() and not out.is_dir():
        raise UserError(f"bench output folder {str(out)!r} is a file, not a folder")
    for row in rows:
        check_replaceable(out / "samples" / row["name"], SAMPLE_FILES, f"samples folder of row {row['name']!r}")
    results: dict[str, dict] = {}
    spreads: dict[str, tuple[Spread | None, Spread | None]] = {}  # toy rows: (row's, rendered clips')
    scores: dict[str, np.ndarray] = {}  # toy rows: per-video METRICS, for the paired differences
    with ExitStack() as staged:  # every row's folder is swapped in when all rows are written
        for row in rows:
            settings = row_settings(row, defaults)
            model = load_backbone(row["model"], map_location=device, dtype=settings["dtype"])
            size = video_size(model, settings["frames"], settings["height"], settings["width"],
                              f"{source}: video size of row {row['name']!r}")
            steps = model.defaults.steps if row.get("steps") is None else row["steps"]
            cfg = model.defaults.cfg if row.get("cfg") is None else row["cfg"]
            print(f"[{row['name']}] {row['model']}: {len(prompt_list)} videos of {size[0]} x {size[1]} x {size[2]}, "
                  f"{steps} steps, cfg {cfg}")
            gen = generate(model, prompt_list, steps=steps, cfg=cfg, guidance=row.get("guidance"), seed=seed,
                           batch_size=batch_size, num_frames=size[0], height=size[1], width=size[2])
            tmp = staged.enter_context(atomic_folder(out / "samples" / row["name"], SAMPLE_FILES))
            scored = write_samples(gen, tmp, fps=model.defaults.fps, mp4=mp4, label=row["name"])
            overall = {} if scored is None else scored.overall
            results[row["name"]] = {**overall, "steps": steps, "cfg": cfg, "time (s)": gen.seconds,
                                    "model": str(row["model"])}
            if scored is not None:
                scores[row["name"]] = scored.scores
                T, _, H, W = gen.videos.shape[1:]
                spreads[row["name"]] = spread_of(gen.videos, gen.prompts), data_spread(gen.prompts, T, H, W)
    if reference is not None:
        base = results[reference]["time (s)"]
        for r in results.values():
            r["speed-up"] = base / r["time (s)"]
    note = add_diversity(results, spreads, reference)
    paired = add_paired(results, scores, reference)
    note = "\n\n".join(n for n in (note, paired) if n)
    hidden = {"model", "spread", "diversity se", "diversity reference", "diversity (data)", "diversity (data) se",
              *(f"{m} {k}" for m in PAIRED for k in ("diff", "diff se", "se"))}
    table = format_table({k: {c: v for c, v in r.items() if c not in hidden} for k, r in results.items()})
    table += f"\n\n{note}" if note else ""
    atomic_write_text(out / "toybench.md", table + "\n")
    atomic_write_text(out / "toybench.json", json.dumps(results, indent=2))
    print(table)
    return results


def add_paired(results: dict[str, dict], scores: dict[str, np.ndarray], reference: str | None) -> str:
    """Each toy row's ``semantic se`` / ``quality se`` (standard error of its mean over the videos) and, against the
    ``reference`` row, the paired difference ``{metric} diff`` with its ``{metric} diff se`` (video for video: the
    same prompts and seeds), shown as ``{metric} vs ref`` = ``+d +/- se``; return the table's note."""
    if not scores:
        return ""
    for name, own in scores.items():
        for m in PAIRED:
            col = own[:, METRICS.index(m)]
            results[name][f"{m} se"] = float(col.std(ddof=1) / np.sqrt(len(col))) if len(col) > 1 else 0.0
    if reference is None or reference not in scores:
        return ""
    for name, own in scores.items():
        if name == reference:
            continue
        for m in PAIRED:
            d, se = paired_difference(own, scores[reference], m)
            results[name][f"{m} diff"], results[name][f"{m} diff se"] = d, se
            results[name][f"{m} vs ref"] = f"{d:+.3f} +/- {se:.3f}"
    n = len(scores[reference])
    return (f"vs ref: the paired difference from row {reference!r} over the same {n} prompts and seeds, video for "
            "video, +/- its standard error (std / sqrt(n)).")


def add_diversity(results: dict[str, dict], spreads: dict[str, tuple[Spread | None, Spread | None]],
                  reference: str | None) -> str:
    """Set each toy row's ``diversity`` and ``diversity se`` against the ``reference`` row's spread (rendered
    clips' when there is none), ``diversity reference``, ``diversity (data)`` with its ``se`` and the ``spread``;
    return the table's note. ``spreads[name]``: the row's spread and that of rendered clips of its prompts."""
    if not spreads:
        return ""
    label = DATA_REFERENCE if reference is None else f"row {reference!r}"
    for name, (spread, data) in spreads.items():
        r = results[name]
        against_data = relative_diversity(spread, data)[0] or {}
        r["diversity (data)"], r["diversity (data) se"] = against_data.get("diversity"), against_data.get("se")
        if reference is not None:
            row = relative_diversity(spread, spreads.get(reference, (None, None))[0])[0] or {}
            r["diversity"], r["diversity se"] = row.get("diversity"), row.get("se")
        else:
            r["diversity"], r["diversity se"] = r["diversity (data)"], r["diversity (data) se"]
        r["diversity reference"] = label
        r["spread"] = spread and spread.to_json()
    return (f"diversity: each row's spread of the object's start position and size over the seeds of a prompt, "
            f"over that of {label} (n/a: one video per prompt).")


def read_spec(path: Path) -> dict:
    """The bench file as a mapping, or one line naming the file (and the line of a YAML syntax error)."""
    text = read_text(path, "bench file")
    try:
        spec = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        reason = getattr(err, "problem", None) or " ".join(str(err).split())
        raise UserError(f"bench file {str(path)!r} is not valid YAML{where}: {reason}") from None
    spec = {} if spec is None else spec
    if not isinstance(spec, dict):
        raise UserError(f"bench file {str(path)!r} must be a mapping of keys ({', '.join(sorted(SPEC_KEYS))}), "
                        f"got a {type(spec).__name__}")
    if set(spec) - SPEC_KEYS:
        unknown = sorted(map(str, set(spec) - SPEC_KEYS))
        raise UserError(f"unknown keys {unknown} in {path}; valid: {', '.join(sorted(SPEC_KEYS))}")
    for key in ("out", "prompts", "device"):
        if key in spec and not isinstance(spec[key], str):
            raise UserError(f"{path}: {key!r} must be a string, got {spec[key]!r}")
    if spec.get("reference") is not None and not isinstance(spec["reference"], str):
        raise UserError(f"{path}: 'reference' must be a row name, got {spec['reference']!r}")
    return spec


def run(argv: list[str]) -> dict[str, dict]:
    p = CommandParser(prog="vdistill bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("rows", help="the YAML file of rows (see above)")
    p.add_argument("--out", default=None, help="override the YAML's output folder")
    p.add_argument("--device", default=None, help="override the YAML's device (default cpu): cpu, cuda, cuda:N")
    p.add_argument("--mp4", type=int, default=None, help="override the YAML's mp4s per row (default 8; 0: none)")
    p.add_argument("--rows", nargs="+", metavar="NAME", default=None, dest="only_rows",
                   help="sample only these rows of the file (the reference row, if any, must be one of them)")
    args = p.parse_args(argv)
    path = Path(args.rows)
    spec = read_spec(path)
    device = args.device or spec.get("device", "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"bench device {device!r}: no CUDA GPU is visible here; use --device cpu")
    rows = spec.get("rows", [])
    check_rows(rows, spec.get("reference"), str(path))
    if args.only_rows:
        names = [r["name"] for r in rows]
        unknown_rows = [n for n in args.only_rows if n not in names]
        if unknown_rows:
            raise UserError(f"--rows {unknown_rows} are not rows of {path}; its rows: {names}")
        rows = [r for r in rows if r["name"] in args.only_rows]
    mp4 = spec.get("mp4", 8) if args.mp4 is None else check_int(args.mp4, "--mp4", -1)
    return run_bench(rows, args.out or spec.get("out", "runs/bench"), spec.get("prompts", "toy"),
                     spec.get("repeat", 1), spec.get("seed", 0), spec.get("reference"), spec.get("batch_size", 48),
                     device, mp4, source=str(path), defaults={k: spec[k] for k in MODEL_KEYS if k in spec})
