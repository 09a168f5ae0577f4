"""The benchmark scripts of ``experiments/bench`` run end to end in their quick mode (a tiny Wan, one or two steps of
everything, outputs under tmp_path): every row is in the printed table and the JSON, every time is positive and
finite, both sides of the overhead comparison compute the same loss, and the step-cost script's forward counts and
FLOPs follow from what each objective runs. No timing is compared: the figures of a quick run mean nothing."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "experiments" / "bench"


def run_script(name: str, tmp_path: Path, *extra: str) -> tuple[str, dict]:
    out = tmp_path / "result.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, str(BENCH / name), "--quick", "--work", str(tmp_path / "work"), "--json",
                          str(out), *extra], capture_output=True, text=True, env=env, timeout=1200)
    assert res.returncode == 0, res.stderr[-4000:]
    return res.stdout, json.loads(out.read_text())


def positive(*values: float) -> bool:
    return all(isinstance(v, (int, float)) and math.isfinite(v) and v > 0 for v in values)


@pytest.mark.slow
def test_overhead_script_reports_every_row(tmp_path):
    stdout, result = run_script("overhead.py", tmp_path)
    names = [r["row"] for r in result["rows"]]
    assert names == ["train trajectory (full student)", "train consistency (LoRA r4)", "synth (in-process)",
                     "synth (command)", "sample (in-process)", "sample (command)",
                     *(f"sample part: {part} (fresh load)" for part in ("load", "text encoding", "denoising",
                                                                         "VAE decode"))]
    for r in result["rows"]:
        assert f"| {r['row']} |" in stdout
        for side in ("ours", "bare"):
            s = r[side]
            assert s["steps"] >= 1 and positive(s["min_s"], s["median_s"], s["max_s"])
            assert s["min_s"] <= s["median_s"] <= s["max_s"]
        assert r["ratio"] == pytest.approx(r["bare"]["median_s"] / r["ours"]["median_s"])
    for r in result["rows"][:2]:  # the bare loops compute our losses from the same weights and draws
        assert r["same_math_relative_difference"] <= 1e-4
    startup = result["startup"]
    assert set(startup["seconds"]) == {"vdistill --help", "vdistill list", "python -c 'import torch'"}
    assert all(positive(v["median_s"]) for v in startup["seconds"].values())
    for name in ("list", "synth", "sample"):
        assert positive(startup[name]["import_s_total"])
        assert startup[name]["imports_lightning"] is False  # commands that do not train
    assert "torch" not in startup["list"]["import_s_by_package"]  # `list` reads the registry's sources only
    assert "torch" in startup["synth"]["import_s_by_package"] and "torch" in startup["sample"]["import_s_by_package"]


@pytest.mark.slow
def test_step_cost_script_counts_each_objectives_forwards(tmp_path):
    stdout, result = run_script("step_cost.py", tmp_path)
    rows = {(r["model"], r["objective"], r["step"]): r for r in result["rows"]}
    kinds = [("trajectory", "every step"), ("consistency", "every step"),
             ("dmd", "average of 1 student + 4 fake-only steps"), ("dmd", "student step"), ("dmd", "fake-only step")]
    assert list(rows) == [(m, o, s) for m in ("toy-flow", "reduced Wan") for o, s in kinds]
    batch = {"toy-flow": 2, "reduced Wan": 1}  # --quick; key points 0, 1, 2: two pairs per trajectory
    for model, b in batch.items():
        for key in kinds:
            r = rows[(model, *key)]
            assert f"| {model} | {key[0]} | {key[1]} |" in stdout
            assert r["n"] >= 1 and positive(r["median_s"], r["gflops"])
        tg, cd = rows[(model, "trajectory", "every step")], rows[(model, "consistency", "every step")]
        student, fake = rows[(model, "dmd", "student step")], rows[(model, "dmd", "fake-only step")]
        average = rows[(model, "dmd", "average of 1 student + 4 fake-only steps")]
        assert student["n"] + fake["n"] == average["n"] == tg["n"]
        assert tg["calls"] == {"student/grad": 2 * b, "student/forwards": 1}
        assert cd["calls"]["teacher/no_grad"] == 2 * b and cd["calls"]["student/grad"] == b  # CFG: 2 rows a sample
        assert student["calls"]["teacher/no_grad"] == 2 * b and student["calls"]["fake score/grad"] == b
        assert student["calls"]["student/grad"] == b
        assert "teacher/no_grad" not in fake["calls"] and "student/grad" not in fake["calls"]
        assert average["gflops"] == pytest.approx((student["gflops"] + 4 * fake["gflops"]) / 5)
        assert student["gflops"] > fake["gflops"]
