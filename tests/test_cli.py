"""The command line: component listing, config printing, a tiny fit -> export -> sample, and user errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from cli_helpers import run_cli

ROOT = Path(__file__).resolve().parents[1]


def test_list_shows_components_by_kind(capsys):
    code, out, _ = run_cli(["list"], capsys)
    assert code == 0
    for word in ["backbones", "ToyBackbone", "FlowSchedule", "TeacherTraining", "ToyVideos", "ExportBackbone"]:
        assert word in out


def test_print_config_of_the_teacher_recipe(capsys, tmp_path):
    recipe = ROOT / "experiments/toy/teachers/teacher_flow.yaml"
    code, out, _ = run_cli(["fit", "--config", str(recipe), "--print_config"], capsys)
    cfg = yaml.safe_load(out)
    assert code == 0
    assert cfg["model"]["init_args"]["backbone"]["class_path"] == "vdistill.backbones.toy.ToyBackbone"
    # the printed config is a complete one: it parses again, with the recipe's own values, without the recipe
    recipe = yaml.safe_load((ROOT / "experiments/toy/teachers/teacher_flow.yaml").read_text())
    assert cfg["trainer"]["max_steps"] == recipe["trainer"]["max_steps"]
    again = tmp_path / "printed.yaml"
    again.write_text(out)
    code, out_again, _ = run_cli(["fit", "--config", str(again), "--print_config"], capsys)
    assert code == 0 and yaml.safe_load(out_again) == cfg


@pytest.mark.parametrize(
    "args, message",
    [
        (["fit", "--config", "experiments/toy/teachers/teacher_flow.yaml", "--model", "TeacherTrainin"],
         "unknown component 'TeacherTrainin'.*valid choices: .*TeacherTraining"),
        (["fit", "--config", "experiments/toy/teachers/teacher_flow.yaml", "--model.init_args.backbone", "ToyBackbon"],
         "unknown component 'ToyBackbon'.*ToyBackbone"),
        (["fit", "--config", "experiments/toy/missing.yaml"], "does not exist"),
        (["sample", "--model", "toy-flw", "--out", "x"], "toy-flw.*toy-flow"),
        (["sample", "--model", "toy-flow", "--prompts", "no/such/file.txt", "--out", "x"], "no/such/file.txt"),
    ],
)
def test_user_errors_are_one_clear_line(args, message, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    code, out, err = run_cli(args, capsys)
    assert code == 2
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    import re

    assert re.search(message, err), err


def test_console_script_exit_status(tmp_path):
    exe = Path(sys.executable).parent / "vdistill"
    proc = subprocess.run([str(exe), "sample", "--model", "nope", "--out", str(tmp_path)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and "vdistill: error: model 'nope'" in proc.stderr


TINY_RECIPE = """
seed_everything: 0
trainer:
  accelerator: cpu
  default_root_dir: {root}
  max_steps: 3
  logger: false
  enable_checkpointing: false
  enable_progress_bar: false
  enable_model_summary: false
  callbacks:
    - class_path: ExportBackbone
      init_args: {{dirpath: {export}}}
model:
  class_path: TeacherTraining
  init_args:
    backbone:
      class_path: ToyBackbone
      init_args:
        schedule: {{class_path: DDPMSchedule, init_args: {{beta_schedule: linear}}}}
        base_channels: 8
        channel_mult: [1, 2]
        emb_dim: 16
        text_dim: 16
        steps: 3
data:
  class_path: ToyVideos
  init_args: {{batch_size: 4, samples_per_epoch: 16, val_samples: 4}}
"""


@pytest.mark.slow
def test_fit_export_sample(tmp_path, capsys):
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(TINY_RECIPE.format(export=tmp_path / "export", root=tmp_path / "run"))
    code, _, err = run_cli(["fit", "--config", str(recipe)], capsys)
    assert code == 0, err
    assert (tmp_path / "export" / "backbone.yaml").is_file()
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle moving left\na blue square moving up\n")
    code, out, err = run_cli(["sample", "--model", str(tmp_path / "export"), "--steps", "2", "--prompts",
                              str(prompts), "--out", str(tmp_path / "s"), "--seed", "3"], capsys)
    assert code == 0, err
    data = np.load(tmp_path / "s" / "videos.npz")
    assert data["videos"].shape == (2, 8, 16, 16, 3) and data["videos"].dtype == np.uint8
    assert list(data["prompts"]) == ["a red circle moving left", "a blue square moving up"]
    assert (tmp_path / "s" / "grid.gif").stat().st_size > 0
    bench = json.loads((tmp_path / "s" / "toybench.json").read_text())
    assert 0 <= bench["overall"]["semantic"] <= 1
    assert "semantic" in out and "ms per video" in out


@pytest.mark.slow
def test_validate_and_test_subcommands(tmp_path, capsys):
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(TINY_RECIPE.format(export=tmp_path / "export", root=tmp_path / "run"))
    for sub in ("validate", "test"):
        code, out, err = run_cli([sub, "--config", str(recipe), "--trainer.callbacks=[]"], capsys)
        assert code == 0, err
        assert f"{'val' if sub == 'validate' else 'test'}/loss" in out
