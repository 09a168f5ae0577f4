"""experiments/gpu/real_scale.sh end to end in its CPU dry run (DRY_RUN=1: toy recipes at their own size, the
measurement on the CPU): every recipe measured, its figures written, one summary row each."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "experiments" / "gpu" / "real_scale.sh"
RECIPES = ("toy_accvideo", "toy_turbo", "toy_dmd")


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_dry_run_summarises_every_recipe(tmp_path):
    out = tmp_path / "real_scale"
    env = {**os.environ, "DRY_RUN": "1", "OMP_NUM_THREADS": "1"}
    run = subprocess.run(["bash", str(SCRIPT), str(out)], env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    summary = (out / "summary.txt").read_text()
    rows = {line.split()[0]: line for line in summary.splitlines() if line.split() and line.split()[0] in RECIPES}
    assert set(rows) == set(RECIPES), summary
    assert "FAILED" not in summary
    for name in RECIPES:
        data = json.loads((out / f"{name}_own.json").read_text())
        assert data["measured"]["step_s"] > 0 and data["measured"]["videos"]["student"]["seconds"] > 0
        assert "Measured on cpu" in (out / f"{name}_own.txt").read_text()
    # the teacher's video is timed once per teacher and size: accvideo and dmd share toy-flow, turbo has toy-ddpm
    timed = {n for n in RECIPES if "teacher" in json.loads((out / f"{n}_own.json").read_text())["measured"]["videos"]}
    assert timed == {"toy_accvideo", "toy_turbo"}
    assert "(toy_accvideo)" in rows["toy_dmd"] and rows["toy_dmd"].split()[-2].endswith("x")  # a measured speed-up
