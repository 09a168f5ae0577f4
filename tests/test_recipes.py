"""The shipped experiment files agree with each other: every sweep loads (its fragments exist), every bench file is
valid, and a bench row that reads a sweep's student names a run of that sweep."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from vdistill.commands.bench import check_rows
from vdistill.sweep import load_sweep

ROOT = Path(__file__).resolve().parents[1]
TOY = ROOT / "experiments" / "toy"
SWEEPS = sorted(p for p in TOY.rglob("*.yaml") if {"runs", "grid"} & set(yaml.safe_load(p.read_text()) or {}))
BENCHES = sorted(TOY.rglob("*_bench.yaml"))


@pytest.fixture(scope="module")
def sweeps(monkeypatch_module) -> dict[str, set[str]]:
    """``{sweep out folder: run names}`` for every sweep file (paths resolve from the repo root)."""
    monkeypatch_module.chdir(ROOT)
    loaded = [load_sweep(p.relative_to(ROOT)) for p in SWEEPS]
    return {str(s.out): {r.name for r in s.runs} for s in loaded}


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def test_there_are_recipes_to_check():
    assert len(SWEEPS) >= 4 and len(BENCHES) >= 6


@pytest.mark.parametrize("bench", BENCHES, ids=lambda p: p.stem)
def test_bench_files_name_existing_runs(bench, sweeps):
    spec = yaml.safe_load(bench.read_text())
    check_rows(spec["rows"], spec.get("reference"))
    for row in spec["rows"]:
        model = Path(row["model"])
        if model.parts[:1] == ("runs",) and model.name == "export" and str(model.parent.parent) in sweeps:
            assert model.parent.name in sweeps[str(model.parent.parent)], f"{bench.name}: {row}"
        elif model.parts[:1] != ("runs",):
            assert model.parts == (row["model"],), f"{bench.name}: {row} is neither a shipped model nor a run"
