"""``vdistill sweep``: grid expansion and names, the results table from event files, skip / resume / rerun, errors.

The logic tests replace the ``vdistill fit`` subprocess by a fake that writes what a fit writes (event file,
``last.ckpt``, log); one slow test runs a real sweep of one run of 2 steps and resumes it.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest
import yaml
from cli_helpers import run_cli

from vdistill.commands import sweep as command
from vdistill.sweep import load_sweep
from vdistill.sweep.results import final_scalars
from vdistill.sweep.runs import resolve

ROOT = Path(__file__).resolve().parents[1]
SWEEPS = sorted(p for p in (ROOT / "experiments").rglob("*.yaml")
                if {"grid", "runs"} & set(yaml.safe_load(p.read_text()) or {}))

RECIPE = """
seed_everything: 0
trainer:
  accelerator: cpu
  max_steps: 2
  log_every_n_steps: 1
  num_sanity_val_steps: 0
  enable_progress_bar: false
  enable_model_summary: false
  default_root_dir: recipe_root
  callbacks:
    - class_path: ModelCheckpoint
      init_args: {dirpath: recipe_root/checkpoints, save_last: true, every_n_train_steps: 1}
model:
  class_path: TeacherTraining
  init_args:
    backbone:
      class_path: ToyBackbone
      init_args:
        schedule: {class_path: DDPMSchedule, init_args: {beta_schedule: linear}}
        base_channels: 8
        channel_mult: [1, 2]
        emb_dim: 16
        text_dim: 16
        steps: 3
data:
  class_path: ToyVideos
  init_args: {batch_size: 2, samples_per_epoch: 8, val_samples: 2}
"""

GRID = """
out: out
base: recipe.yaml
grid:
  lr:
    lo: {model.init_args.lr: 1.0e-4}
    hi: {model.init_args.lr: 1.0e-2}
  extra:
    none: null
    dropout: [fragment.yaml]
"""


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A working directory with the tiny recipe, a fragment and a 2 x 2 grid sweep file."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "recipe.yaml").write_text(RECIPE)
    (tmp_path / "fragment.yaml").write_text("model:\n  init_args:\n    caption_dropout: 0.3\n")
    (tmp_path / "sweep.yaml").write_text(GRID)
    return tmp_path


def write_events(logdir: Path, scalars: dict[str, list[float]]) -> None:
    from torch.utils.tensorboard import SummaryWriter

    w = SummaryWriter(str(logdir))
    for tag, values in scalars.items():
        for step, v in enumerate(values):
            w.add_scalar(tag, v, step)
    w.close()


class FakeFit:
    """Stands in for the ``vdistill fit`` subprocess: records the commands, writes an event file, a
    ``last.ckpt`` and a log line; ``outcome[run name]`` is its exit status, or an exception to raise."""

    def __init__(self, outcome: dict | None = None):
        self.calls: list[list[str]] = []
        self.outcome = outcome or {}

    def __call__(self, cmd: list[str], log_path: Path, quiet: bool = False) -> int:
        self.calls.append(cmd)
        run_dir = Path(cmd[cmd.index("--config") + 1]).parent
        cfg = yaml.safe_load((run_dir / "resolved.yaml").read_text())
        lr = cfg["model"]["init_args"]["lr"]
        write_events(run_dir / "lightning_logs" / f"version_{len(self.calls)}", {"train/loss": [1.0, lr]})
        (run_dir / "checkpoints").mkdir(exist_ok=True)
        (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"")
        result = self.outcome.get(run_dir.name, 0)
        with log_path.open("a") as f:
            f.write("ValueError: boom\n" if result == 1 else "fit done\n")
        if isinstance(result, BaseException):
            raise result
        return result

    def runs(self) -> list[str]:
        return [Path(c[c.index("--config") + 1]).parent.name for c in self.calls]


def test_grid_expansion_names_and_arguments(workdir):
    sweep = load_sweep("sweep.yaml")
    assert [r.name for r in sweep.runs] == ["lo-none", "lo-dropout", "hi-none", "hi-dropout"]
    assert sweep.columns == ["lr", "extra"] and sweep.out == Path("out")
    run = sweep.runs[1]
    assert run.options == {"lr": "lo", "extra": "dropout"}
    assert run.args == ("--config", "recipe.yaml", "--model.init_args.lr=0.0001", "--config", "fragment.yaml")
    # names are filesystem-safe; an explicit list of runs derives names from fragments and overrides
    (workdir / "list.yaml").write_text("base: [recipe.yaml]\nruns:\n  - {name: 'lr 1e-3 / b', with: "
                                       "{model.init_args.lr: 0.001}}\n  - with: [fragment.yaml, {trainer.max_steps: "
                                       "5}]\n  - {}\n")
    listed = load_sweep("list.yaml", out="elsewhere")
    assert [r.name for r in listed.runs] == ["lr_1e-3_b", "fragment-max_steps_5", "base"]
    assert listed.runs[1].options == {"with": "fragment.yaml --trainer.max_steps=5"}
    assert listed.out == Path("elsewhere")


def test_config_fragments_from_the_command_line_join_every_run(workdir, capsys):
    sweep = load_sweep("sweep.yaml", extra=["fragment.yaml"])
    assert [r.name for r in sweep.runs] == ["lo-none", "lo-dropout", "hi-none", "hi-dropout"]  # names unchanged
    assert all(r.args[-2:] == ("--config", "fragment.yaml") for r in sweep.runs)
    code, out, _ = run_cli(["sweep", "sweep.yaml", "--config", "fragment.yaml", "--dry-run"], capsys)
    assert code == 0 and out.count("--config fragment.yaml") >= 4
    code, _, err = run_cli(["sweep", "sweep.yaml", "--config", "missing.yaml", "--dry-run"], capsys)
    assert code == 2 and "config fragment 'missing.yaml' does not exist" in err


def test_resolved_config_moves_outputs_into_the_run_folder(workdir):
    run = load_sweep("sweep.yaml").runs[1]
    text, digest, shared = resolve(Path("out") / run.name, command.resolved_config(run))
    cfg = yaml.safe_load(text)
    assert cfg["trainer"]["default_root_dir"] == "out/lo-dropout"
    assert cfg["trainer"]["callbacks"][0]["init_args"]["dirpath"] == "out/lo-dropout/checkpoints"
    assert cfg["model"]["init_args"]["lr"] == 1e-4 and cfg["model"]["init_args"]["caption_dropout"] == 0.3
    assert shared == [] and len(digest) == 64
    assert resolve(Path("out") / run.name, command.resolved_config(run))[1] == digest  # stable
    # an output outside the recipe's root is shared by every run: the sweep warns
    (workdir / "shared.yaml").write_text(RECIPE.replace("dirpath: recipe_root/checkpoints", "dirpath: /tmp/ckpts"))
    (workdir / "sweep.yaml").write_text(GRID.replace("base: recipe.yaml", "base: shared.yaml"))
    run = load_sweep("sweep.yaml").runs[0]
    assert resolve(Path("out/x"), command.resolved_config(run))[2] == ["dirpath: /tmp/ckpts"]


def test_final_scalars_take_the_last_logged_value(tmp_path):
    write_events(tmp_path / "run" / "lightning_logs" / "version_0", {"train/loss": [3.0, 2.0], "hp_metric": [-1.0]})
    write_events(tmp_path / "run" / "lightning_logs" / "version_1", {"train/loss": [1.5, 0.5], "val/x": [7.0]})
    metrics, logdir = final_scalars(tmp_path / "run")
    assert metrics == {"train/loss": 0.5, "val/x": 7.0}  # the resumed attempt's values; hp_metric dropped
    assert logdir == str(tmp_path / "run" / "lightning_logs")
    assert final_scalars(tmp_path / "nothing") == ({}, "")


def test_skip_finished_runs_and_rerun_on_config_change(workdir, monkeypatch, capsys):
    fake = FakeFit()
    monkeypatch.setattr(command, "run_fit", fake)
    code, out, _ = run_cli(["sweep", "sweep.yaml"], capsys)
    assert code == 0 and fake.runs() == ["lo-none", "lo-dropout", "hi-none", "hi-dropout"]
    assert "tensorboard --logdir out" in out
    rows = list(csv.DictReader((workdir / "out" / "results.csv").open()))
    assert [(r["run"], r["lr"], r["extra"], r["status"]) for r in rows] == [
        ("lo-none", "lo", "none", "done"), ("lo-dropout", "lo", "dropout", "done"),
        ("hi-none", "hi", "none", "done"), ("hi-dropout", "hi", "dropout", "done")]
    assert float(rows[2]["train/loss"]) == pytest.approx(1e-2)  # read back from the event files
    assert rows[0]["tensorboard"] == "out/lo-none/lightning_logs/version_1"
    assert "| hi-dropout | hi | dropout | done |" in (workdir / "out" / "results.md").read_text()

    code, out, _ = run_cli(["sweep", "sweep.yaml"], capsys)
    assert code == 0 and len(fake.calls) == 4 and out.count("done, skipped") == 4

    (workdir / "sweep.yaml").write_text(GRID.replace("1.0e-2", "2.0e-2"))
    code, out, _ = run_cli(["sweep", "sweep.yaml"], capsys)
    assert code == 0 and fake.runs()[4:] == ["hi-none", "hi-dropout"]
    assert re.search(r"hi-none +config changed since it finished \(\w{12} -> \w{12}\): reruns from scratch", out)
    assert len(list((workdir / "out" / "_stale").iterdir())) == 2  # the old folders are kept aside
    rows = list(csv.DictReader((workdir / "out" / "results.csv").open()))
    assert float(rows[2]["train/loss"]) == pytest.approx(2e-2)


def test_interrupted_run_resumes_from_its_last_checkpoint(workdir, monkeypatch, capsys):
    fake = FakeFit({"lo-dropout": KeyboardInterrupt()})
    monkeypatch.setattr(command, "run_fit", fake)
    code, _, err = run_cli(["sweep", "sweep.yaml", "--quiet"], capsys)
    assert code == 130 and "rerun the same command" in err
    assert fake.runs() == ["lo-none", "lo-dropout"]
    status = {r["run"]: r["status"] for r in csv.DictReader((workdir / "out" / "results.csv").open())}
    assert status == {"lo-none": "done", "lo-dropout": "interrupted", "hi-none": "pending", "hi-dropout": "pending"}
    assert not (workdir / "out" / "lo-dropout" / "done.json").exists()

    fake.outcome = {}
    code, out, _ = run_cli(["sweep", "sweep.yaml", "--quiet"], capsys)
    assert code == 0 and fake.runs()[2:] == ["lo-dropout", "hi-none", "hi-dropout"]
    assert fake.calls[2][-2:] == ["--ckpt_path", "out/lo-dropout/checkpoints/last.ckpt"]
    assert "--ckpt_path" not in fake.calls[3]
    assert "unfinished, resumes from out/lo-dropout/checkpoints/last.ckpt" in out


def test_a_failed_run_does_not_stop_the_sweep(workdir, monkeypatch, capsys):
    fake = FakeFit({"lo-none": 1})
    monkeypatch.setattr(command, "run_fit", fake)
    code, out, err = run_cli(["sweep", "sweep.yaml", "--only", "lo-none", "hi-none", "--quiet"], capsys)
    assert code == 1 and fake.runs() == ["lo-none", "hi-none"]
    assert "lo-none: failed (exit 1)" in out and "| ValueError: boom" in out and "failed runs: lo-none" in err
    rows = {r["run"]: r for r in csv.DictReader((workdir / "out" / "results.csv").open())}
    assert rows["lo-none"]["status"] == "failed (exit 1)" and rows["lo-none"]["error"] == "ValueError: boom"
    assert rows["hi-none"]["status"] == "done" and rows["hi-dropout"]["status"] == "pending"


def test_sigterm_stopped_fit_is_not_finished(workdir, monkeypatch, capsys):
    # Lightning exits with status 0 after a SIGTERM: the log tells the sweep the run did not finish.
    def stopped(cmd, log_path, quiet=False):
        log_path.write_text("[rank: 0] Received SIGTERM: 15\n")
        return 0

    monkeypatch.setattr(command, "run_fit", stopped)
    code, _, _ = run_cli(["sweep", "sweep.yaml", "--only", "lo-none"], capsys)
    assert code == 130 and not (workdir / "out" / "lo-none" / "done.json").exists()


def test_dry_run_lists_runs_and_commands_and_writes_nothing(workdir, monkeypatch, capsys):
    monkeypatch.setattr(command, "run_fit", None)
    code, out, _ = run_cli(["sweep", "sweep.yaml", "--dry-run", "--only", "hi-dropout"], capsys)
    assert code == 0 and not (workdir / "out").exists()
    assert "vdistill fit --config recipe.yaml --model.init_args.lr=0.01 --config fragment.yaml" in out
    assert "-> vdistill fit --config out/hi-dropout/resolved.yaml" in out
    assert re.search(r"lo-none +not selected", out)


@pytest.mark.parametrize(
    "sweep, message",
    [
        ("base: recipe.yaml\ngrid: {a: {x: null}}\nouts: o\n", r"unknown keys \['outs'\].*valid keys: out, base"),
        ("base: recipe.yaml\ngrid: {a: {x: missing.yaml}}\n", r"axis 'a', option 'x': .*'missing.yaml' does not"),
        ("base: missing.yaml\ngrid: {a: {x: null}}\n", r"base: config fragment 'missing.yaml' does not exist"),
        ("base: recipe.yaml\ngrid: {}\n", r"grid is empty"),
        ("base: recipe.yaml\ngrid: {a: {}}\n", r"axis 'a' of the grid needs at least one named option"),
        ("base: recipe.yaml\ngrid: {a: {on: null}}\n", r"option name True is not a string.*quote"),
        ("base: recipe.yaml\ngrid: {a: {x: 3}}\n", r"axis 'a', option 'x': expected a config path"),
        ("base: recipe.yaml\ngrid: {a: {x: {'bad key': 1}}}\n", r"'bad key' is not a dotted config key"),
        ("base: recipe.yaml\n", r"needs exactly one of 'grid'.*and 'runs'"),
        ("grid: {a: {x: null}}\n", r"needs 'base'"),
        ("base: recipe.yaml\nruns: [{name: a, width: 3}]\n", r"unknown keys \['width'\]; valid keys: name, with"),
        ("base: recipe.yaml\nruns: [{name: a}, {name: a}]\n", r"run names \['a'\] occur more than once"),
        ("base: recipe.yaml\nruns: [{name: a, with: {model.init_args.lrr: 1}}]\n",
         r"run 'a': Option 'lrr' is not accepted \(under 'model'\)"),
    ],
)
def test_bad_sweep_files_are_one_clear_line(workdir, capsys, sweep, message):
    (workdir / "bad.yaml").write_text(sweep)
    code, _, err = run_cli(["sweep", "bad.yaml", "--dry-run"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert re.search(message, err), err


def test_unknown_run_and_missing_file(workdir, capsys):
    code, _, err = run_cli(["sweep", "sweep.yaml", "--only", "lo-nine"], capsys)
    assert code == 2 and "unknown run 'lo-nine'; valid choices: hi-dropout, hi-none, lo-dropout, lo-none" in err
    code, _, err = run_cli(["sweep", "nope.yaml"], capsys)
    assert code == 2 and "sweep file 'nope.yaml' does not exist" in err


def sets_callbacks(config: str) -> bool:
    """Whether a config file sets ``trainer.callbacks:`` anew (and so drops what came before it)."""
    return "callbacks" in (yaml.safe_load(Path(config).read_text()).get("trainer") or {})


def test_shipped_sweeps_keep_the_callbacks_their_fragments_append(monkeypatch):
    """A fragment that sets ``trainer.callbacks:`` anew drops what earlier ``callbacks+:`` fragments appended (the
    ablation orders its axes for this): in every run of the shipped sweeps that has such a fragment after its base,
    every callback of its ``callbacks/`` fragments is in the resolved config."""
    monkeypatch.chdir(ROOT)  # sweep files name their configs from the repository root; nothing is written
    checked = []
    for path in SWEEPS:
        for run in load_sweep(path.relative_to(ROOT)).runs:
            configs = [a for a in run.args[3:] if a.endswith(".yaml")]  # after --config BASE
            appended = [c for c in configs if c.startswith("callbacks/")]
            if not appended or not any(sets_callbacks(c) for c in configs):
                continue
            resolved = yaml.safe_load(command.resolved_config(run))["trainer"]["callbacks"]
            have = [c["class_path"].rsplit(".", 1)[-1] for c in resolved]
            for fragment in appended:
                for c in yaml.safe_load(Path(fragment).read_text())["trainer"]["callbacks+"]:
                    assert c["class_path"].rsplit(".", 1)[-1] in have, (path.name, run.name, fragment, have)
            checked.append(run.name)
    assert checked


@pytest.mark.slow
def test_real_sweep_run_then_resume(workdir, monkeypatch, capsys):
    """One real ``vdistill fit`` subprocess of 2 steps (the skipping and the table of several runs: the fakes
    above), then its resume from the last checkpoint."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    (workdir / "sweep.yaml").write_text("out: out\nbase: recipe.yaml\ngrid:\n  extra: {dropout: fragment.yaml}\n")
    code, out, err = run_cli(["sweep", "sweep.yaml", "--quiet"], capsys)
    assert code == 0, out + err
    rows = list(csv.DictReader((workdir / "out" / "results.csv").open()))
    assert [(r["run"], r["status"]) for r in rows] == [("dropout", "done")]
    row = rows[0]
    assert 0 < float(row["train/loss"]) < 10 and row["seconds"]  # the run's time is recorded (not bounded)
    assert row["tensorboard"] == "out/dropout/lightning_logs/version_0"
    assert list(Path(row["tensorboard"]).glob("events.out.tfevents.*"))
    assert (workdir / "out" / "dropout" / "checkpoints" / "last.ckpt").is_file()
    assert not (workdir / "recipe_root").exists()  # every output went into the run folder

    (workdir / "out" / "dropout" / "done.json").unlink()  # as if it had been killed after its last checkpoint
    code, out, err = run_cli(["sweep", "sweep.yaml", "--quiet"], capsys)
    assert code == 0, out + err
    assert re.search(r"dropout +unfinished, resumes", out)
    log = (workdir / "out" / "dropout" / "fit.log").read_text()
    assert "Restored all states from the checkpoint at out/dropout/checkpoints/last.ckpt" in log
