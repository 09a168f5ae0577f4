"""Corrupt trajectories and non-finite losses stop a distillation fit at once: one line naming the shard or the step,
exit status 2, the checkpoints written before kept and loadable, no export; under DDP every rank stops."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from cli_helpers import run_cli
from synth_helpers import flip_bit, write_nan  # noqa: E402

from vdistill.backbones.io import load_backbone
from vdistill.callbacks.export import ExportBackbone
from vdistill.data.trajectories import TrajectoryData
from vdistill.errors import UserError
from vdistill.modules.distill import Distillation
from vdistill.objectives import TrajectoryGuidance


@pytest.fixture
def data(tiny_world, tmp_path) -> Path:
    """A copy of the tiny world's 8 trajectories (2 shards of 4) to tamper with."""
    return Path(shutil.copytree(tiny_world / "synvid", tmp_path / "synvid"))


def recipe(tiny_world: Path, data: Path, run: Path, num_workers: int = 0) -> Path:
    """4 steps of batches of 2 in order (samples 4, 5 of shard 1 at step 2), a checkpoint after every step, and an
    export at the end."""
    cfg = {
        "seed_everything": 0,
        "trainer": {"accelerator": "cpu", "devices": 1, "max_steps": 4, "logger": False,
                    "enable_progress_bar": False, "enable_model_summary": False, "default_root_dir": str(run),
                    "callbacks": [
                        {"class_path": "ModelCheckpoint",
                         "init_args": {"dirpath": str(run / "checkpoints"), "every_n_train_steps": 1,
                                       "save_top_k": -1}},
                        {"class_path": "ExportBackbone", "init_args": {"dirpath": str(run / "export")}}]},
        "model": {"class_path": "Distillation",
                  "init_args": {"teacher": str(tiny_world / "flow"), "lr": 1e-3,
                                "objectives": [{"class_path": "TrajectoryGuidance"}]}},
        "data": {"class_path": "TrajectoryData",
                 "init_args": {"root": str(data), "batch_size": 2, "shuffle": False, "num_workers": num_workers}},
    }
    path = run / "fit.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg))
    return path


def failed_fit(config: Path, capsys) -> str:
    code, _, err = run_cli(["fit", "--config", str(config)], capsys)
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def assert_stopped_cleanly(run: Path, steps_done: int) -> None:
    """No export; a checkpoint per finished step, the last one loadable as a student with finite weights."""
    assert not (run / "export").exists()
    ckpts = sorted((run / "checkpoints").glob("*.ckpt"))
    assert [c.name for c in ckpts] == [f"epoch=0-step={s}.ckpt" for s in range(1, steps_done + 1)]
    student = load_backbone(ckpts[-1])
    assert all(p.isfinite().all() for p in student.parameters())


@pytest.mark.parametrize("num_workers", [0, 1])
def test_nan_latents_stop_the_fit_in_one_line(tiny_world, data, tmp_path, num_workers, capsys):
    """NaN in sample 5 (shard 1), the manifest's sha256 fixed up: the checksum passes and the row check stops the
    fit at step 2, also when a DataLoader worker reads the row."""
    write_nan(data, 1, 1)
    line = failed_fit(recipe(tiny_world, data, tmp_path / "run", num_workers), capsys)
    assert line == (f"vdistill: error: shard '{data / 'shard-00001.safetensors'}' is corrupt (non-finite latents in "
                    "sample 5); delete it and rerun the same synthesis command to regenerate it")
    assert_stopped_cleanly(tmp_path / "run", steps_done=2)


def test_a_flipped_bit_stops_the_fit(tiny_world, data, tmp_path, capsys):
    flip_bit(data / "shard-00001.safetensors")
    line = failed_fit(recipe(tiny_world, data, tmp_path / "run"), capsys)
    assert line.startswith(f"vdistill: error: shard '{data / 'shard-00001.safetensors'}' is corrupt (sha256 differs")
    assert_stopped_cleanly(tmp_path / "run", steps_done=2)


def nan_from_call(monkeypatch, first_bad: int) -> None:
    """``TrajectoryGuidance`` returns a NaN loss (still in the graph) from its ``first_bad``-th call on."""
    real, calls = TrajectoryGuidance.forward, []

    def forward(self, batch, models):
        out = real(self, batch, models)
        calls.append(1)
        if len(calls) >= first_bad:
            out = {**out, "trajectory": out["trajectory"] * float("nan")}
        return out

    monkeypatch.setattr(TrajectoryGuidance, "forward", forward)


def test_a_nan_loss_stops_the_fit_in_one_line(tiny_world, data, tmp_path, monkeypatch, capsys):
    nan_from_call(monkeypatch, 3)
    line = failed_fit(recipe(tiny_world, data, tmp_path / "run"), capsys)
    assert line.startswith("vdistill: error: the loss is not finite (loss/trajectory=nan, loss/total=nan) on the "
                           f"batch from '{data / 'shard-00001.safetensors'}' at global step 2: training stopped")
    assert_stopped_cleanly(tmp_path / "run", steps_done=2)


def test_the_guard_runs_before_the_update(tiny_world, data, tmp_path, monkeypatch):
    """The weights in memory after the failed step are those of the checkpoint before it, bit for bit (a backward
    through the NaN loss would have made them NaN)."""
    nan_from_call(monkeypatch, 3)
    model = Distillation(str(tiny_world / "flow"), [TrajectoryGuidance()], lr=1e-3)
    trainer = L.Trainer(max_steps=4, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path,
                        callbacks=[L.pytorch.callbacks.ModelCheckpoint(tmp_path / "ckpt", every_n_train_steps=1,
                                                                       save_top_k=-1),
                                   ExportBackbone(str(tmp_path / "export"))])
    with pytest.raises(UserError, match="at global step 2"):
        trainer.fit(model, datamodule=TrajectoryData(str(data), batch_size=2, shuffle=False))
    saved = torch.load(tmp_path / "ckpt" / "epoch=0-step=2.ckpt", weights_only=True)["state_dict"]
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert torch.equal(p, saved[name]), name
    assert not (tmp_path / "export").exists()


DDP_DRIVER = """
import os, sys
import lightning as L
from vdistill.errors import UserError
from vdistill.modules.distill import Distillation
from vdistill.objectives import TrajectoryGuidance
from vdistill.data.trajectories import TrajectoryData

real, calls = TrajectoryGuidance.forward, []


def forward(self, batch, models):  # rank 1's second step has a NaN loss, rank 0's never
    out = real(self, batch, models)
    calls.append(1)
    if os.environ.get("LOCAL_RANK", "0") == "1" and len(calls) == 2:
        out = {**out, "trajectory": out["trajectory"] * float("nan")}
    return out


TrajectoryGuidance.forward = forward
flow, data, out = sys.argv[1:4]
trainer = L.Trainer(max_steps=3, accelerator="cpu", devices=2, strategy="ddp", logger=False,
                    enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
try:
    trainer.fit(Distillation(flow, [TrajectoryGuidance()], lr=1e-3),
                datamodule=TrajectoryData(data, batch_size=1, shuffle=False))
except UserError as err:
    open(f"{out}/rank{trainer.global_rank}.txt", "w").write(str(err))
    sys.exit(2)
"""


def test_every_ddp_rank_stops_at_the_same_step(tiny_world, tmp_path):
    """Two CPU ranks (gloo), a NaN loss on rank 1 only: both ranks raise at the same step and exit (a rank that
    went on would wait in the gradient all-reduce forever; the timeout catches that)."""
    driver = tmp_path / "driver.py"
    driver.write_text(textwrap.dedent(DDP_DRIVER))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run([sys.executable, str(driver), str(tiny_world / "flow"), str(tiny_world / "synvid"),
                           str(tmp_path)], capture_output=True, text=True, timeout=240, env=env, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    ranks = {r: (tmp_path / f"rank{r}.txt").read_text() for r in (0, 1)}
    assert ranks[1].startswith("the loss is not finite (loss/trajectory=nan, loss/total=nan) on the batch from")
    assert ranks[1].split(": training stopped")[0].endswith("at global step 1")
    assert ranks[0].startswith("the loss of another rank is not finite at global step 1: training stopped")
