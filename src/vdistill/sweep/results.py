"""The sweep's results table: one row per run, its options, status and the last logged value of each scalar.

Scalars are read from the run's TensorBoard event files (every ``events.out.tfevents.*`` under its folder: a
resumed run has one log version per attempt, and the value logged last wins).
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

from vdistill.data.shards import atomic_write

# Lightning logs hp_metric = -1 for hyperparameter search when no metric was named: not a result of the run.
IGNORED_TAGS = {"hp_metric"}


def final_scalars(run_dir: str | Path) -> tuple[dict[str, float], str]:
    """``({tag: last logged value}, TensorBoard log dir)`` of one run; ``({}, "")`` when it logged nothing.

    The log dir is the folder holding the event files, or their common parent when a resumed run wrote several.
    """
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    dirs = sorted({p.parent for p in Path(run_dir).rglob("events.out.tfevents.*")})
    last: dict[str, tuple[float, int, float]] = {}
    for d in dirs:
        acc = EventAccumulator(str(d), size_guidance={"scalars": 0})  # 0: keep every point, not a sample
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            if tag in IGNORED_TAGS:
                continue
            for e in acc.Scalars(tag):
                if tag not in last or (e.wall_time, e.step) >= last[tag][:2]:
                    last[tag] = (e.wall_time, e.step, e.value)
    logdir = os.path.commonpath([str(d) for d in dirs]) if dirs else ""
    return {tag: v[2] for tag, v in sorted(last.items())}, logdir


def _cell(v: Any) -> str:
    if v is None or v == "":
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v).replace("|", "\\|")


def write_results(rows: list[dict[str, Any]], out: str | Path, lead: list[str]) -> tuple[Path, Path]:
    """``out/results.csv`` and ``out/results.md``: the ``lead`` columns, then every metric, then the rest."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tail = ["seconds", "tensorboard", "error"]
    metrics = sorted({k for r in rows for k in r} - set(lead) - set(tail))
    columns = [*lead, *metrics, *(t for t in tail if any(r.get(t) not in (None, "") for r in rows))]
    csv_path, md_path = out / "results.csv", out / "results.md"

    def write_csv(tmp: Path) -> None:
        with tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)

    atomic_write(csv_path, write_csv)
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join(" --- " for _ in columns) + "|"]
    lines += ["| " + " | ".join(_cell(r.get(c)) for c in columns) + " |" for r in rows]
    atomic_write(md_path, lambda tmp: tmp.write_text("\n".join(lines) + "\n"))
    return csv_path, md_path
