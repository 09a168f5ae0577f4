"""``vdistill fit ... --ckpt_path last`` continues a killed run exactly: a run killed after its step-3 checkpoint
(SIGKILL of a real CLI process, or an exception in-process) and resumed to step 6 ends with the checkpoint of an
uninterrupted run to step 6, bit for bit: weights, optimizer moments, LR schedule, GAN fake queues, consistency EMA
target, every rank's RNG state. Both runs cross an epoch boundary (4 batches per epoch) with shuffled data."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from vdistill.cli import main

pytestmark = pytest.mark.filterwarnings("ignore:critic 'img' has no checkpoint")

KILL_AT, STEPS = 3, 6
#: a callback the CLI loads by class path: logs each step it starts, and dies at one (``kill``) or raises (``raise``)
PROBE = '''
import json, os, signal
import lightning as L


class Interrupted(RuntimeError):
    pass


class Probe(L.Callback):
    def __init__(self, steps_log: str, stop_at: int = -1, how: str = "kill") -> None:
        self.steps_log, self.stop_at, self.how = steps_log, stop_at, how

    def on_train_batch_start(self, trainer, *args) -> None:
        with open(self.steps_log, "a") as f:
            f.write(json.dumps(trainer.global_step) + "\\n")
        if trainer.global_step == self.stop_at:  # the checkpoint of step stop_at is on disk
            if self.how == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            raise Interrupted(f"interrupted at step {self.stop_at}")
'''


@pytest.fixture
def world(tiny_world, tmp_path) -> Path:
    """The tiny toy world (teachers, trajectories) and the probe module, importable by the CLI."""
    (tmp_path / "probe.py").write_text(PROBE)
    for name in ("flow", "ddpm", "synvid"):
        (tmp_path / name).symlink_to(tiny_world / name)
    return tmp_path


def accvideo(world: Path) -> dict:
    """Trajectory guidance + adversarial alignment (fake queues) on shuffled key points."""
    return {"model": {"class_path": "Distillation", "init_args": {
        "teacher": str(world / "flow"),
        "discriminator": {"class_path": "Discriminator", "init_args": {"hidden": 8}},
        "objectives": [{"class_path": "TrajectoryGuidance"},
                       {"class_path": "AdversarialAlignment", "init_args": {"weight": 0.1, "queue_size": 3}}],
        "lr": 1e-3, "disc_lr": 1e-3, "warmup_steps": 4}},
        "data": {"class_path": "TrajectoryData", "init_args": {"root": str(world / "synvid"), "batch_size": 2,
                                                                "dtype": "float32"}}}


def turbo(world: Path) -> dict:
    """Consistency distillation with an EMA target + reward feedback (a critic that samples frames at random)."""
    return {"model": {"class_path": "Distillation", "init_args": {
        "teacher": str(world / "ddpm"), "student": {"guidance_embedding": True},
        "objectives": [{"class_path": "ConsistencyDistillation",
                        "init_args": {"w_min": 1.0, "w_max": 3.0, "guidance": 2.0}},
                       {"class_path": "RewardFeedback", "init_args": {"critics": {"img": 0.5}}}],
        "critics": {"img": {"critic": "toy-image", "checkpoint": None, "size": "tiny", "num_frames": 2}},
        "target_ema_decay": 0.9, "lr": 1e-3, "warmup_steps": 4}},
        "data": {"class_path": "ToyVideos", "init_args": {"batch_size": 2, "samples_per_epoch": 8, "num_frames": 4,
                                                           "size": 8}}}


def write_config(run: Path, recipe: dict, stop_at: int = -1, how: str = "kill") -> Path:
    run.mkdir(parents=True, exist_ok=True)
    cfg = {"seed_everything": 0, **recipe, "trainer": {
        "accelerator": "cpu", "devices": 1, "max_steps": STEPS, "logger": False, "enable_progress_bar": False,
        "enable_model_summary": False, "default_root_dir": str(run),
        "callbacks": [
            {"class_path": "ModelCheckpoint",
             "init_args": {"dirpath": str(run / "ckpt"), "every_n_train_steps": KILL_AT, "save_last": True}},
            {"class_path": "probe.Probe",
             "init_args": {"steps_log": str(run / "steps.log"), "stop_at": stop_at, "how": how}}]}}
    path = run / f"config_{stop_at}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def steps_run(run: Path) -> list[int]:
    lines = (run / "steps.log").read_text().splitlines()
    (run / "steps.log").unlink()
    return [json.loads(line) for line in lines]


def load(run: Path) -> dict:
    return torch.load(run / "ckpt" / "last.ckpt", map_location="cpu", weights_only=True)


def assert_same(a, b, where: str = "checkpoint") -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_same(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def assert_resumed_exactly(straight: dict, resumed: dict) -> None:
    assert straight["global_step"] == resumed["global_step"] == STEPS
    for key in ("state_dict", "optimizer_states", "lr_schedulers", "vdistill_rank_states", "epoch"):
        assert_same(straight[key], resumed[key], key)
    assert resumed["lr_schedulers"][0]["last_epoch"] == STEPS


@pytest.mark.slow
def test_a_killed_cli_run_resumes_exactly(world, tmp_path, monkeypatch):
    """AccVideo's mix: SIGKILL of the real CLI right after the step-3 checkpoint, then ``--ckpt_path last``."""
    monkeypatch.syspath_prepend(str(world))
    monkeypatch.setattr(sys, "argv", ["vdistill"])  # main(args) runs as if typed, not with pytest's arguments
    killed = write_config(tmp_path / "killed", accvideo(world), stop_at=KILL_AT, how="kill")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(world), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}  # the same thread count as this process: the same float sums
    proc = subprocess.run([sys.executable, "-m", "vdistill.cli", "fit", "--config", str(killed)], env=env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert steps_run(tmp_path / "killed") == [0, 1, 2, 3] and load(tmp_path / "killed")["global_step"] == KILL_AT

    resume = write_config(tmp_path / "killed", accvideo(world))
    main(["fit", "--config", str(resume), "--ckpt_path", "last"])
    assert steps_run(tmp_path / "killed") == [3, 4, 5]  # steps 4..6 only: it did resume
    main(["fit", "--config", str(write_config(tmp_path / "straight", accvideo(world)))])

    straight, resumed = load(tmp_path / "straight"), load(tmp_path / "killed")
    assert_resumed_exactly(straight, resumed)
    queue = resumed["state_dict"]["objectives.1.queue._extra_state"]
    assert queue["size"] == 3 and queue["0/latents"].shape[0] == 3  # full queues, restored and refilled


@pytest.mark.slow
def test_an_interrupted_consistency_run_resumes_exactly(world, tmp_path, monkeypatch):
    """T2V-Turbo's mix (random times, noise, guidance scales and critic frames; an EMA target): an exception after
    the step-3 checkpoint, then ``--ckpt_path last``."""
    monkeypatch.syspath_prepend(str(world))
    monkeypatch.setattr(sys, "argv", ["vdistill"])  # main(args) runs as if typed, not with pytest's arguments
    import probe

    run = tmp_path / "interrupted"
    with pytest.raises(probe.Interrupted):
        main(["fit", "--config", str(write_config(run, turbo(world), stop_at=KILL_AT, how="raise"))])
    assert steps_run(run) == [0, 1, 2, 3] and load(run)["global_step"] == KILL_AT
    main(["fit", "--config", str(write_config(run, turbo(world))), "--ckpt_path", "last"])
    assert steps_run(run) == [3, 4, 5]
    main(["fit", "--config", str(write_config(tmp_path / "straight", turbo(world)))])

    straight, resumed = load(tmp_path / "straight"), load(run)
    assert_resumed_exactly(straight, resumed)
    assert any(k.startswith("target.") for k in resumed["state_dict"])  # the EMA target is in the comparison
