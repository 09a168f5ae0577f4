"""Importing vdistill leaves the process's warning filters alone; the CLI ignores the warnings every recipe would
print only while it runs."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import yaml
from cli_helpers import run_cli

import vdistill
from vdistill.commands.lightning_cli import EXPECTED_WARNINGS

SRC = Path(vdistill.__file__).resolve().parents[1]

IMPORTS = """
import sys, warnings

ours = []  # the filters that vdistill's own code adds (its dependencies add some of their own at import)


def recorded(add):
    def add_filter(*args, **kwargs):
        if sys._getframe(1).f_globals.get("__name__", "").split(".")[0] == "vdistill":
            ours.append((add.__name__, args, kwargs))
        return add(*args, **kwargs)
    return add_filter


warnings.filterwarnings, warnings.simplefilter = recorded(warnings.filterwarnings), recorded(warnings.simplefilter)
import vdistill.modules.distill, vdistill.commands.lightning_cli
print(ours)
"""


def test_importing_the_module_and_the_cli_adds_no_warning_filter():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", IMPORTS], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_the_cli_ignores_expected_warnings_only_while_it_runs(toy, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = {"seed_everything": 0,
           "trainer": {"accelerator": "cpu", "devices": 1, "max_steps": 1, "logger": False,
                       "enable_checkpointing": False, "enable_progress_bar": False, "enable_model_summary": False},
           "model": {"class_path": "Distillation", "init_args": {
               "teacher": str(toy / "teacher"), "objectives": [{"class_path": "TrajectoryGuidance"}]}},
           "data": {"class_path": "TrajectoryData", "init_args": {"root": str(toy / "data"), "batch_size": 2}}}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        code, _, err = run_cli(["fit", "--config", "run.yaml"], capsys)
        left = [f for f in warnings.filters if f[1] is not None and f[1].pattern in EXPECTED_WARNINGS]
    assert code == 0, err
    assert not left  # the CLI's filters went with it
    messages = [str(w.message) for w in seen]
    # the teacher in eval mode, and no held-out set: neither is worth a warning
    assert not [m for m in messages if "eval mode" in m or "validation_step" in m or "val_dataloader" in m]
