"""The sweep file: base configs plus a grid of named options (or an explicit list of runs) -> named runs.

An *item* is a config fragment (a YAML path, given to ``vdistill fit --config``) or a mapping of dotted
overrides (``{trainer.max_steps: 10}`` -> ``--trainer.max_steps=10``); an option is one item, a list of items,
or nothing (``null``). Items apply in order: base first, then each axis in the order of the file, so a later
fragment overrides an earlier one (a fragment that sets ``trainer.callbacks:`` replaces the list that earlier
``callbacks+:`` fragments appended to).
"""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from vdistill.errors import UserError

SWEEP_KEYS = ("out", "base", "grid", "runs")
RUN_KEYS = ("name", "with")
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")
_KEY = re.compile(r"^[A-Za-z_][\w.]*\+?$")


@dataclass(frozen=True)
class Run:
    """One training run of a sweep.

    Attributes:
        name: folder name under the sweep's output folder (filesystem-safe, unique in the sweep).
        options: the run's option per axis (``{axis: option}``), or ``{"with": "..."}`` for an explicit run.
        args: the ``vdistill fit`` arguments that build its config, base included (``--config PATH``, ``--k=v``).
    """

    name: str
    options: dict[str, str]
    args: tuple[str, ...]


@dataclass
class Sweep:
    path: Path
    out: Path
    runs: list[Run]
    columns: list[str] = field(default_factory=list)  # the option columns of the results table


def slug(text: str) -> str:
    """A filesystem-safe name: runs of other characters than letters, digits, ``_ . -`` become ``_``."""
    return _UNSAFE.sub("_", text).strip("_.")


def _value(v: Any) -> str:
    # jsonargparse reads a command-line value as YAML: JSON is YAML, and plain strings stay as they are.
    return v if isinstance(v, str) else json.dumps(v)


def item_args(item: Any, where: str) -> tuple[list[str], list[str]]:
    """``(fit arguments, name parts)`` of one option (``None``, an item or a list of items)."""
    if item is None:
        return [], []
    if isinstance(item, (str, dict)):
        item = [item]
    if not isinstance(item, list):
        raise UserError(f"{where}: expected a config path, a mapping of dotted overrides, a list of these or "
                        f"nothing, got {item!r}")
    args: list[str] = []
    parts: list[str] = []
    for it in item:
        if isinstance(it, str):
            if not Path(it).is_file():
                raise UserError(f"{where}: config fragment {it!r} does not exist")
            args += ["--config", it]
            parts.append(Path(it).stem)
        elif isinstance(it, dict) and it:
            for key, v in it.items():
                if not isinstance(key, str) or not _KEY.match(key):
                    raise UserError(f"{where}: {key!r} is not a dotted config key such as 'trainer.max_steps'")
                args.append(f"--{key}={_value(v)}")
                parts.append(f"{key.rsplit('.', 1)[-1]}_{_value(v)}")
        else:
            raise UserError(f"{where}: expected a config path or a mapping of dotted overrides, got {it!r}")
    return args, parts


def _option_name(axis: str, name: Any) -> str:
    if isinstance(name, bool) or name is None:
        raise UserError(f"axis {axis!r}: option name {name!r} is not a string (YAML reads on / off / yes / no / "
                        "true / false / null as booleans or nothing: quote it)")
    safe = slug(str(name))
    if not safe:
        raise UserError(f"axis {axis!r}: option name {name!r} has no letter or digit to name a folder with")
    return safe


def expand_grid(grid: Any, base: list[str]) -> tuple[list[Run], list[str]]:
    """Every combination of one option per axis, in the file's order; run name = option names joined by ``-``."""
    if not isinstance(grid, dict) or not grid:
        raise UserError(f"the grid is empty or not a mapping of axes (axis: {{option: items}}), got {grid!r}")
    axes = []
    for axis, options in grid.items():
        if not isinstance(options, dict) or not options:
            raise UserError(f"axis {axis!r} of the grid needs at least one named option (option: items), "
                            f"got {options!r}")
        axes.append([(str(axis), _option_name(str(axis), name), item_args(items, f"axis {axis!r}, option {name!r}"))
                     for name, items in options.items()])
    runs = []
    for combo in itertools.product(*axes):
        name = "-".join(opt for _, opt, _ in combo)
        args = [a for _, _, (option_args, _) in combo for a in option_args]
        runs.append(Run(name, {axis: opt for axis, opt, _ in combo}, (*base, *args)))
    return runs, [str(a) for a in grid]


def explicit_runs(entries: Any, base: list[str]) -> tuple[list[Run], list[str]]:
    """``runs: [{name: optional, with: items}, ...]``; a missing name is made of the fragments and overrides."""
    if not isinstance(entries, list) or not entries:
        raise UserError(f"'runs' must be a non-empty list of {{name: ..., with: [...]}}, got {entries!r}")
    runs = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or set(entry) - set(RUN_KEYS):
            bad = sorted(set(entry) - set(RUN_KEYS)) if isinstance(entry, dict) else entry
            raise UserError(f"run {i} of 'runs': unknown keys {bad}; valid keys: {', '.join(RUN_KEYS)}")
        args, parts = item_args(entry.get("with"), f"run {entry.get('name', i)!r}")
        name = slug(str(entry["name"])) if entry.get("name") is not None else slug("-".join(parts) or "base")
        if not name:
            raise UserError(f"run {i} of 'runs': name {entry['name']!r} has no letter or digit")
        runs.append(Run(name, {"with": " ".join(a for a in args if a != "--config")}, (*base, *args)))
    return runs, ["with"]


def load_sweep(path: str | Path, out: str | Path | None = None, extra: list[str] | None = None) -> Sweep:
    """Read and check a sweep file; fragment paths are relative to the working directory (the repo root).

    ``extra``: config fragments appended to every run after its options (e.g. a device fragment); they change
    each run's config (and so its done-marker hash) but not its name.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"sweep file {str(path)!r} does not exist")
    try:
        spec = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise UserError(f"sweep file {str(path)!r} is not valid YAML: {err}".replace("\n", " ")) from None
    if not isinstance(spec, dict):
        raise UserError(f"sweep file {str(path)!r} must be a mapping with keys {', '.join(SWEEP_KEYS)}")
    unknown = sorted(map(str, set(spec) - set(SWEEP_KEYS)))
    if unknown:
        raise UserError(f"unknown keys {unknown} in sweep file {str(path)!r}; valid keys: {', '.join(SWEEP_KEYS)}")
    if ("grid" in spec) == ("runs" in spec):
        raise UserError(f"sweep file {str(path)!r} needs exactly one of 'grid' (axes of named options) and 'runs' "
                        "(a list of runs)")
    if not spec.get("base"):
        raise UserError(f"sweep file {str(path)!r} needs 'base': the config(s) every run starts from")
    base, _ = item_args(spec["base"], "base")
    if "grid" in spec:
        runs, columns = expand_grid(spec["grid"], base)
    else:
        runs, columns = explicit_runs(spec["runs"], base)
    if extra:
        tail, _ = item_args(list(extra), "--config")
        runs = [Run(r.name, r.options, (*r.args, *tail)) for r in runs]
    names = [r.name for r in runs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise UserError(f"run names {dupes} occur more than once in {str(path)!r}: give the options or runs "
                        "distinct names")
    out = out if out is not None else spec.get("out") or Path("runs/sweeps") / path.stem
    return Sweep(path, Path(out), runs, columns)
