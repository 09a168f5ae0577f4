"""One run's folder: its resolved config, the record of its last attempt, its completion marker, its checkpoints.

``OUT/<run>/`` holds

* ``resolved.yaml``: the full config (``vdistill fit --print_config`` of the run's fragments and overrides) with
  every path under the recipe's ``trainer.default_root_dir`` moved into the run folder (logs, checkpoints,
  exports), so runs never share an output; the run is ``vdistill fit --config OUT/<run>/resolved.yaml``,
* ``sweep.json``: the last attempt (command, status, exit code, seconds, the config hash),
* ``done.json``: the completion marker, written atomically after a successful fit, with the config hash,
* ``fit.log``: everything the fits printed, attempts appended.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from vdistill.data.shards import atomic_write
from vdistill.sweep.spec import Run

RESOLVED, RECORD, DONE, LOG = "resolved.yaml", "sweep.json", "done.json", "fit.log"
# Init arguments that name where a component writes: a value outside the run folder is shared by every run.
OUTPUT_KEYS = ("dirpath", "save_dir", "export_dir", "default_root_dir")


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def relocate(cfg: Any, root: str, run_dir: str) -> Any:
    """Every string that is ``root`` or a path under it, rebased onto ``run_dir`` (recursively)."""
    if isinstance(cfg, dict):
        return {k: relocate(v, root, run_dir) for k, v in cfg.items()}
    if isinstance(cfg, list):
        return [relocate(v, root, run_dir) for v in cfg]
    if isinstance(cfg, str) and _under(os.path.normpath(cfg), root):
        return run_dir + os.path.normpath(cfg)[len(root):]
    return cfg


def shared_outputs(cfg: Any, run_dir: str) -> list[str]:
    """``key: path`` of each output path (``OUTPUT_KEYS``) outside ``run_dir``."""
    found = []
    if isinstance(cfg, dict):
        for k, v in cfg.items():
            if k in OUTPUT_KEYS and isinstance(v, str) and not _under(os.path.normpath(v), run_dir):
                found.append(f"{k}: {v}")
            else:
                found += shared_outputs(v, run_dir)
    elif isinstance(cfg, list):
        for v in cfg:
            found += shared_outputs(v, run_dir)
    return found


def resolve(run_dir: Path, printed: str) -> tuple[str, str, list[str]]:
    """``(resolved.yaml text, its sha256, outputs shared with other runs)`` of one run, from its config as
    ``vdistill fit --print_config`` prints it (``printed``), moved into ``run_dir``."""
    cfg = yaml.safe_load(printed)
    cfg.setdefault("trainer", {})
    target = os.path.normpath(str(run_dir))
    root = cfg["trainer"].get("default_root_dir")
    if root and os.path.normpath(root) not in (".", "/"):
        cfg = relocate(cfg, os.path.normpath(root), target)
    cfg["trainer"]["default_root_dir"] = target
    text = yaml.safe_dump(cfg, sort_keys=False)
    return text, hashlib.sha256(text.encode()).hexdigest(), shared_outputs(cfg, target)


def write_json(path: Path, obj: dict) -> None:
    """Atomic (:func:`~vdistill.data.shards.atomic_write`), so a crash never leaves half a marker."""
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=2) + "\n"))


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def last_checkpoint(run_dir: Path) -> Path | None:
    """The newest ``last*.ckpt`` under the run folder, else its newest ``*.ckpt``; ``None`` when there is none."""
    for pattern in ("last*.ckpt", "*.ckpt"):
        found = sorted(run_dir.rglob(pattern), key=lambda p: p.stat().st_mtime)
        if found:
            return found[-1]
    return None


@dataclass
class Plan:
    """What a sweep does with one run: ``skip`` (done), ``run`` (fresh), ``resume`` (from ``ckpt``) or
    ``rerun`` (its finished or started folder was made with another config: ``stale`` says why)."""

    run: Run
    dir: Path
    text: str
    hash: str
    action: str
    ckpt: Path | None = None
    stale: str = ""
    shared: tuple[str, ...] = ()

    def describe(self) -> str:
        if self.action == "skip":
            return "done, skipped"
        if self.action == "resume":
            return f"unfinished, resumes from {self.ckpt}"
        if self.action == "rerun":
            return f"{self.stale}: reruns from scratch"
        return "pending"


def _short(marker: dict) -> str:
    return str(marker.get("hash", "?"))[:12]


def plan_run(run: Run, out: Path, printed: str) -> Plan:
    """What to do with ``run`` (run, skip, resume or rerun), given its printed config (:func:`resolve`)."""
    run_dir = out / run.name
    text, digest, shared = resolve(run_dir, printed)
    plan = Plan(run, run_dir, text, digest, "run", shared=tuple(shared))
    done, record = read_json(run_dir / DONE), read_json(run_dir / RECORD)
    if done is not None:
        if done.get("hash") == digest:
            plan.action = "skip"
        else:
            plan.action, plan.stale = "rerun", f"config changed since it finished ({_short(done)} -> {digest[:12]})"
    elif record is not None and record.get("hash") != digest:
        plan.action, plan.stale = "rerun", f"config changed since it started ({_short(record)} -> {digest[:12]})"
    elif record is not None:
        plan.ckpt = last_checkpoint(run_dir)
        plan.action = "resume" if plan.ckpt else "run"
    return plan


def prepare(plan: Plan, out: Path) -> Path | None:
    """Create the run folder and write ``resolved.yaml``; a stale folder is moved to ``OUT/_stale/`` first
    (returned), never deleted."""
    moved = None
    if plan.action == "rerun" and plan.dir.exists():
        moved = out / "_stale" / f"{plan.run.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        moved.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(plan.dir), str(moved))
    plan.dir.mkdir(parents=True, exist_ok=True)
    header = f"# vdistill sweep, run {plan.run.name}: vdistill fit {' '.join(plan.run.args)}\n"
    (plan.dir / RESOLVED).write_text(header + plan.text)
    return moved


def run_status(plan: Plan) -> tuple[str, dict]:
    """``(status, sweep.json)`` of a run as its folder says now: done, failed (exit N), interrupted, unfinished,
    stale, pending."""
    record = read_json(plan.dir / RECORD) or {}
    done = read_json(plan.dir / DONE)
    if done is not None:
        return ("done" if done.get("hash") == plan.hash else "stale"), record
    if not record:
        return "pending", record
    if record.get("hash") != plan.hash:
        return "stale", record
    status = record.get("status", "unfinished")
    if status == "failed":
        status = f"failed (exit {record.get('returncode')})"
    return ("unfinished" if status == "running" else status), record
