"""DMD2 in the distillation module: the fake score's own parameter group in the one AdamW, the two time-scale update
rule (the student and its AdamW state untouched on fake-only steps), checkpoints that keep only trained weights
(adapter-only for a LoRA student and fake score), and exact resume after SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import lightning as L
import pytest
import torch
from test_resume import KILL_AT, PROBE, assert_resumed_exactly, load, steps_run, write_config

from vdistill.backbones.io import load_backbone
from vdistill.backbones.student import StudentConfig
from vdistill.cli import main
from vdistill.data.trajectories import TrajectoryData
from vdistill.errors import UserError
from vdistill.modules.distill import Distillation
from vdistill.objectives import TrajectoryGuidance
from vdistill.objectives.distribution_matching import DistributionMatching
from vdistill.roles.fake_score import FakeScoreConfig


class Record(L.Callback):
    """After every step: the student's trainable weights and AdamW state, the fake score's weights."""

    def __init__(self) -> None:
        self.steps: list[dict] = []

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        opt = trainer.optimizers[0]
        student = [p for p in pl_module.student.parameters() if p.requires_grad]
        fake = pl_module.objectives[0].fake_score.trainable()
        self.steps.append({
            "student": [p.detach().clone() for p in student],
            "state": [{k: v.clone() for k, v in opt.state[p].items()} for p in student],
            "fake": [p.detach().clone() for p in fake]})


def same(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return torch.equal(a, b)


def fit(model, tiny_world, tmp_path, steps: int, callbacks=()) -> L.Trainer:
    trainer = L.Trainer(accelerator="cpu", max_steps=steps, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path, callbacks=list(callbacks))
    trainer.fit(model, datamodule=TrajectoryData(str(tiny_world / "synvid"), batch_size=2, dtype="float32"))
    return trainer


def test_two_time_scale_updates_leave_the_student_untouched_on_fake_only_steps(tiny_world, tmp_path):
    """k = 3 with trajectory guidance in the mix and weight decay on: steps 1 and 2 change the fake score only, the
    student's weights AND AdamW moments / step count stay bit-identical; steps 0 and 3 move both."""
    torch.manual_seed(0)
    dmd = DistributionMatching(fake_updates=3, fake_score=FakeScoreConfig(lr=2e-3, betas=(0.0, 0.99)))
    model = Distillation(str(tiny_world / "flow"), [dmd, TrajectoryGuidance()], lr=1e-3, weight_decay=0.1)
    record = Record()
    trainer = fit(model, tiny_world, tmp_path, 4, [record])
    groups = {g["name"]: g for g in trainer.optimizers[0].param_groups}
    assert set(groups) == {"student", "fake_score"} and len(trainer.optimizers) == 1
    assert groups["fake_score"]["lr"] == 2e-3 and groups["fake_score"]["betas"] == (0.0, 0.99)
    assert groups["fake_score"]["weight_decay"] == 0.1  # the module's, as none of its own is set
    s = record.steps
    for i in (1, 2):
        assert same(s[i]["student"], s[0]["student"]) and same(s[i]["state"], s[0]["state"]), f"step {i}"
        assert not same(s[i]["fake"], s[i - 1]["fake"])
    assert float(s[0]["state"][0]["step"]) == 1 and float(s[3]["state"][0]["step"]) == 2
    assert not same(s[3]["student"], s[2]["student"]) and not same(s[3]["fake"], s[2]["fake"])


@pytest.mark.parametrize("mode", ["lora", "full"])
def test_checkpoints_keep_only_trained_weights(tiny_world, tmp_path, mode):
    """A LoRA student and LoRA fake score: the checkpoint holds their adapters only (and loads as a merged
    student); a full fake score: its denoiser and GAN head, never the teacher's or its shared frozen parts."""
    torch.manual_seed(0)
    dmd = DistributionMatching(fake_updates=2, gan_weight=0.1, gan_hidden=8,
                               fake_score=FakeScoreConfig(mode=mode, lora_rank=4))
    model = Distillation(str(tiny_world / "flow"), [dmd], student=StudentConfig(mode=mode, lora_rank=4), lr=1e-3)
    ckpt = tmp_path / "dmd.ckpt"
    trainer = fit(model, tiny_world, tmp_path, 2)
    trainer.save_checkpoint(ckpt)
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    fake = [k for k in state if k.startswith("objectives.0.fake_score.")]
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(fake) == {n for n in trained if n.startswith("objectives.0.fake_score.")}
    assert set(state) == trained or mode == "full"  # a full toy student also keeps its (shipped) text encoder
    assert any(k.startswith("objectives.0.fake_score.head.") for k in fake)
    assert not any(k.startswith("teacher.") or ".text_encoder." in k for k in fake)
    if mode == "lora":
        assert all("lora_" in k for k in state if ".head." not in k)
        student = load_backbone(str(ckpt))  # adapter-only: rebuilt on the teacher and merged
        assert not any("lora_" in k for k in student.state_dict())
    else:
        assert any(k.startswith("objectives.0.fake_score.net.denoiser.") for k in fake)


def dmd_recipe(world) -> dict:
    """DMD2 + GAN with LoRA student and fake score, k = 2: the kill at step 3 falls between a fake-only step and
    a student step."""
    return {"model": {"class_path": "Distillation", "init_args": {
        "teacher": str(world / "flow"), "student": {"mode": "lora", "lora_rank": 4},
        "objectives": [{"class_path": "DistributionMatching", "init_args": {
            "fake_updates": 2, "gan_weight": 0.1, "gan_hidden": 8,
            "fake_score": {"mode": "lora", "lora_rank": 4, "lr": 2e-3}}}],
        "lr": 1e-3, "warmup_steps": 4}},
        "data": {"class_path": "TrajectoryData", "init_args": {"root": str(world / "synvid"), "batch_size": 2,
                                                                "dtype": "float32"}}}


@pytest.fixture
def world(tiny_world, tmp_path):
    (tmp_path / "probe.py").write_text(PROBE)
    for name in ("flow", "synvid"):
        (tmp_path / name).symlink_to(tiny_world / name)
    return tmp_path


@pytest.mark.slow
def test_a_killed_dmd_run_resumes_exactly(world, tmp_path, monkeypatch):
    """SIGKILL of the real CLI after the step-3 checkpoint, then ``--ckpt_path last``: the fake score's adapters and
    head, their AdamW state and the TTUR phase (from the global step) continue as in an uninterrupted run."""
    monkeypatch.syspath_prepend(str(world))
    monkeypatch.setattr(sys, "argv", ["vdistill"])
    killed = write_config(tmp_path / "killed", dmd_recipe(world), stop_at=KILL_AT, how="kill")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(world), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "vdistill.cli", "fit", "--config", str(killed)], env=env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert steps_run(tmp_path / "killed") == [0, 1, 2, 3]

    main(["fit", "--config", str(write_config(tmp_path / "killed", dmd_recipe(world))), "--ckpt_path", "last"])
    assert steps_run(tmp_path / "killed") == [3, 4, 5]
    main(["fit", "--config", str(write_config(tmp_path / "straight", dmd_recipe(world)))])
    straight, resumed = load(tmp_path / "straight"), load(tmp_path / "killed")
    assert_resumed_exactly(straight, resumed)
    assert any(k.startswith("objectives.0.fake_score.net.") and "lora_" in k for k in resumed["state_dict"])


def test_own_grid_students_train_on_a_two_step_set(tiny_world, tmp_path):
    """``steps: 1`` and ``steps: 4`` on the 2-step set: the student keeps the schedule's own grid (the set gives
    prompts and real samples), the checkpoint records that grid; with trajectory guidance, whose key points are the
    set's, the mismatch is refused before training."""
    for steps in (1, 4):
        torch.manual_seed(0)
        model = Distillation(str(tiny_world / "flow"), [DistributionMatching(fake_updates=1, steps=steps)], lr=1e-3)
        grid = tuple(model.student.schedule.sampling_timesteps(steps).tolist())
        fit(model, tiny_world, tmp_path, 1)
        assert model.student.key_timesteps == grid and model.key_timesteps == grid
        assert model.student.defaults.steps == steps
    mixed = Distillation(str(tiny_world / "flow"), [DistributionMatching(steps=1), TrajectoryGuidance()])
    with pytest.raises(UserError, match="trajectory set's are"):
        fit(mixed, tiny_world, tmp_path, 1)


def test_the_students_learning_rate_counts_its_own_updates(tiny_world, tmp_path):
    """k = 3 with a 3-update warm-up: the student's rate rises at its own updates (global steps 0, 3, 6), the fake
    score's at every step; with k = 1 both follow the global step."""
    class Rates(L.Callback):
        def __init__(self) -> None:
            self.rows: list[dict] = []

        def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
            self.rows.append({g["name"]: g["lr"] for g in optimizer.param_groups})

    rates = Rates()
    dmd = DistributionMatching(fake_updates=3, fake_score=FakeScoreConfig(lr=1.0))
    fit(Distillation(str(tiny_world / "flow"), [dmd], lr=1.0, warmup_steps=3), tiny_world, tmp_path, 7, [rates])
    assert [round(r["fake_score"], 4) for r in rates.rows] == [round(min(1, (s + 1) / 3), 4) for s in range(7)]
    student = [round(r["student"], 4) for r in rates.rows]
    assert student[0] == student[1] == student[2] == round(1 / 3, 4)  # update 1 and the fake-only steps after it
    assert student[3] == round(2 / 3, 4) and student[6] == 1.0  # updates 2 and 3


def test_ddp_without_unused_parameters_is_refused_with_fake_only_steps(tiny_world):
    from lightning.pytorch.strategies import DDPStrategy

    model = Distillation(str(tiny_world / "flow"), [DistributionMatching(fake_updates=5)])
    with pytest.raises(UserError, match="ddp_find_unused_parameters_true"):
        model._check_side_steps(DDPStrategy())
    model._check_side_steps(DDPStrategy(find_unused_parameters=True))
    Distillation(str(tiny_world / "flow"), [DistributionMatching(fake_updates=1)])._check_side_steps(DDPStrategy())
