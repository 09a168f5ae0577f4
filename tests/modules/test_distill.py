"""The distillation module: one fit step per objective mix and teacher family, misconfigurations, exact resume
(GAN queues included), checkpoints that ``load_backbone`` reads, and the toy AccVideo recipe through the CLI."""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path

import lightning as L
import pytest
import torch
from objective_helpers import KEY_PROMPTS as PROMPTS
from objective_helpers import synth_keys as synth
from objective_helpers import tiny_toy

from vdistill.backbones.io import load_backbone, save_backbone
from vdistill.backbones.student import StudentConfig
from vdistill.data.toy import ToyVideos
from vdistill.data.trajectories import TrajectoryData, TrajectoryDataset, collate
from vdistill.errors import UserError
from vdistill.modules.distill import Distillation
from vdistill.objectives import AdversarialAlignment, TrajectoryGuidance
from vdistill.objectives.trajectory import trajectory_errors
from vdistill.roles.discriminator import Discriminator
from vdistill.sampling.sampler import sample_latents

ROOT = Path(__file__).resolve().parents[2]
KEYS = (0, 2, 4)
MIXES = ["trajectory", "trajectory+adversarial"]


def objectives(mix: str) -> list:
    return [TrajectoryGuidance()] + ([AdversarialAlignment(queue_size=2)] if "adversarial" in mix else [])


def make(teacher, mix: str, student: StudentConfig = StudentConfig()) -> Distillation:
    disc = Discriminator(hidden=8) if "adversarial" in mix else None
    return Distillation(teacher, objectives(mix), student=student, discriminator=disc, lr=1e-3, disc_lr=1e-3)


def fit(model, root: Path, max_steps: int, ckpt_path=None, **data) -> L.Trainer:
    trainer = L.Trainer(max_steps=max_steps, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, datamodule=TrajectoryData(str(root), batch_size=2, shuffle=False, **data), ckpt_path=ckpt_path)
    return trainer


def params(module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


@pytest.mark.parametrize("mix", MIXES)
def test_fit_toy(toy, mix):
    model = make(str(toy / "teacher"), mix)
    teacher_before, student_before = params(model.teacher), params(model.student.denoiser)
    trainer = fit(model, toy / "data", max_steps=2)
    logged = set(trainer.callback_metrics)
    assert {"loss/trajectory", "loss/total", "trajectory/k0", "trajectory/k1"} <= logged
    grid = tiny_toy().schedule.sampling_timesteps(4)
    assert model.key_timesteps == tuple(grid[list(KEYS)].tolist()) and model.student.defaults.steps == 2
    assert all(torch.equal(a, b) for a, b in zip(teacher_before, params(model.teacher)))
    assert not all(torch.equal(a, b) for a, b in zip(student_before, params(model.student.denoiser)))
    if "adversarial" in mix:
        assert {"loss/adv_g", "loss/adv_d", "adv/real_acc", "adv/fake_acc", "adv/real_logit"} <= logged
        assert len(model.discriminator.heads) == 2 and model.objectives[1].queue.get(1)[0].shape[0] == 2
        groups = trainer.optimizers[0].param_groups
        assert len(trainer.optimizers) == 1 and [g["name"] for g in groups] == ["student", "discriminator"]
    else:
        assert model.discriminator is None and "loss/adv_g" not in logged


@pytest.mark.parametrize("indices, subset", [((0, 4), True), ((0, 1, 3, 4), False)], ids=["1-step", "3-step"])
def test_student_steps_follow_the_key_points(toy, tmp_path, indices, subset):
    """One jump, one head and one sampling step per pair of adjacent key points: ``key_indices: [0, 4]`` of the 0, 2, 4
    set (a 1-step student), and a set synthesised with the uneven key points 0, 1, 3, 4 of 4 (as 0, 15, 35, 50 of 50 in
    the README: a 3-step student); the export samples exactly at those timesteps."""
    teacher = load_backbone(str(toy / "teacher"))
    if subset:
        root, data = toy / "data", {"key_indices": list(indices)}
    else:
        root, data = synth(teacher, tmp_path / "set", keys=indices), {}
    m = len(indices) - 1
    model = make(str(toy / "teacher"), "trajectory+adversarial")
    trainer = fit(model, root, max_steps=2, **data)
    grid = teacher.schedule.sampling_timesteps(4)
    keys = tuple(grid[i].item() for i in indices)
    assert model.key_timesteps == keys and len(model.discriminator.heads) == m
    assert {f"trajectory/k{i}" for i in range(m)} <= set(trainer.callback_metrics)
    assert f"trajectory/k{m}" not in trainer.callback_metrics
    save_backbone(model.student, tmp_path / "export")
    student = load_backbone(str(tmp_path / "export"))
    assert student.defaults.steps == m and student.key_timesteps == keys
    seen: list[float] = []
    student.register_forward_pre_hook(lambda _m, args: seen.append(args[1].flatten()[0].item()))
    shape = TrajectoryDataset(root)[0]["latents"].shape[1:]
    sample_latents(student, torch.randn(len(PROMPTS), *shape), student.encode_text(PROMPTS))
    assert seen == pytest.approx(keys[:-1])


def test_held_out_trajectory_loss_is_logged(toy, tmp_path):
    """``TrajectoryData(val_root=...)``: ``val/trajectory`` is the student's Eq. 6 loss on the held-out set, per pair
    too, with an adversarial mix as well (its queue untouched by validation)."""
    val = toy / "val"
    model = make(str(toy / "teacher"), "trajectory+adversarial")
    trainer = fit(model, toy / "data", max_steps=2, val_root=str(val))
    queued = model.objectives[1].queue.get(0)[0].clone()
    metrics = trainer.validate(model, datamodule=trainer.datamodule, verbose=False)[0]
    assert torch.equal(model.objectives[1].queue.get(0)[0], queued)
    batch = collate([TrajectoryDataset(val, dtype=torch.float32)[i] for i in range(len(PROMPTS))])
    with torch.no_grad():
        want = trajectory_errors(batch, model.models())
    assert set(metrics) == {"val/trajectory", "val/k0", "val/k1"}
    for key in ("trajectory", "k0", "k1"):
        assert metrics[f"val/{key}"] == pytest.approx(want[key].item(), rel=1e-5)
    assert "val/trajectory" in trainer.callback_metrics  # also validated during fit (each epoch)
    plain = pickle.loads(pickle.dumps(TrajectoryData(str(toy / "data"))))  # as DDP spawn sends it
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        trainer = fit(make(str(toy / "teacher"), "trajectory"), toy / "data", max_steps=1)
    assert plain.val_dataloader is None and trainer.num_val_batches == []  # no held-out set: no validation loop
    assert not [w for w in seen if "validation_step" in str(w.message)]  # and nothing to warn about


def test_held_out_sets_must_match_and_should_not_share_seeds(toy, tmp_path):
    teacher = load_backbone(str(toy / "teacher"))
    same_seeds = synth(teacher, tmp_path / "same_seeds")
    with pytest.warns(UserWarning, match=r"noise seeds 0..1 and the training set 0..1.*not held out"):
        TrajectoryData(str(toy / "data"), val_root=str(same_seeds)).build()
    other_cfg = synth(teacher, tmp_path / "other_cfg", seed=100, cfg=1.0)
    with pytest.raises(UserError, match=r"held-out trajectories.*not made like the training ones.*cfg"):
        TrajectoryData(str(toy / "data"), val_root=str(other_cfg)).build()
    synth(teacher, tmp_path / "ends", keys=(0, 4), seed=100)
    with pytest.raises(UserError, match=r"held-out set .*ends' has key timesteps \[1.0, 0.0\], the training set "
                                        r"\[1.0, 0.\d+, 0.0\]"):
        TrajectoryData(str(toy / "data"), val_root=str(tmp_path / "ends")).build()
    TrajectoryData(str(toy / "data"), val_root=str(tmp_path / "ends"), key_indices=[0, 4]).build()  # the same ends


def test_learning_rate_decays_as_diffusers_schedules(toy):
    from diffusers.optimization import get_cosine_schedule_with_warmup

    class Record(L.Callback):
        lrs: list[float] = []

        def on_train_batch_start(self, trainer, *_):
            self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])

    model = Distillation(str(toy / "teacher"), [TrajectoryGuidance()], lr=1e-3, warmup_steps=2,
                         lr_schedule="cosine")
    trainer = L.Trainer(max_steps=6, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[record := Record()])
    trainer.fit(model, datamodule=TrajectoryData(str(toy / "data"), batch_size=2))
    ref = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1e-3)
    factor = get_cosine_schedule_with_warmup(ref, num_warmup_steps=2, num_training_steps=6).lr_lambdas[0]
    want = [1e-3 * factor(step) for step in range(6)]
    assert record.lrs == pytest.approx(want) and want[1] == pytest.approx(5e-4) and want[-1] < want[2] / 6
    with pytest.raises(UserError, match=r"lr_schedule 'cosin' is not one of \['constant', 'linear', 'cosine'\]"):
        Distillation(str(toy / "teacher"), [TrajectoryGuidance()], lr_schedule="cosin")
    endless = L.Trainer(max_steps=-1, max_epochs=-1, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    with pytest.raises(UserError, match="decays to 0 at the run's last step: set trainer.max_steps"):
        endless.fit(Distillation(str(toy / "teacher"), [TrajectoryGuidance()], lr_schedule="linear"),
                    datamodule=TrajectoryData(str(toy / "data"), batch_size=2))


@pytest.mark.parametrize("mix", MIXES)
@pytest.mark.parametrize("family", ["modelscope", "wan"])
def test_fit_diffusers_teachers(family, mix, request, tmp_path_factory):
    from vdistill.backbones.modelscope import ModelScopeBackbone
    from vdistill.backbones.wan import WanBackbone

    cls, size = (ModelScopeBackbone, 2) if family == "modelscope" else (WanBackbone, 5)
    path = request.getfixturevalue(f"{family}_dir")
    data = tmp_path_factory.getbasetemp() / f"{family}_synvid"
    if not (data / "manifest.json").is_file():
        synth(cls(str(path)), data, num_frames=size, height=32, width=32)
    model = make(cls(str(path)), mix)
    assert model.student.vae is model.teacher.vae  # shared, not copied
    trainer = fit(model, data, max_steps=1)
    assert "loss/trajectory" in trainer.callback_metrics
    if "adversarial" in mix:
        assert "loss/adv_d" in trainer.callback_metrics
        assert trainer.callback_metrics["loss/adv_d"].isfinite()


def test_misconfigurations_are_user_errors(toy):
    with pytest.raises(UserError, match="AdversarialAlignment needs discriminator.*model.discriminator"):
        Distillation(str(toy / "teacher"), [TrajectoryGuidance(), AdversarialAlignment()])
    with pytest.raises(UserError, match="objectives is empty"):
        Distillation(str(toy / "teacher"), [])
    model = make(str(toy / "teacher"), "trajectory+adversarial")
    trainer = L.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    with pytest.raises(UserError, match=r"TrajectoryGuidance needs trajectory.*AdversarialAlignment needs "
                                        r"trajectory.*TrajectoryData.*the data is ToyVideos"):
        trainer.fit(model, datamodule=ToyVideos(batch_size=2, num_frames=4, size=8))


def test_resume_is_exact_and_checkpoints_load_as_students(toy, tmp_path):
    lora = StudentConfig(mode="lora", lora_rank=4)

    def run(max_steps, ckpt_path=None):
        L.seed_everything(0)
        model = make(str(toy / "teacher"), "trajectory+adversarial", lora)
        return model, fit(model, toy / "data", max_steps, ckpt_path)

    straight, _ = run(3)
    first, trainer = run(2)
    ckpt = tmp_path / "step2.ckpt"
    trainer.save_checkpoint(ckpt)
    resumed, trainer = run(3, ckpt_path=str(ckpt))
    assert trainer.global_step == 3
    for a, b in zip(params(straight), params(resumed)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    q_straight, q_resumed = straight.objectives[1].queue, resumed.objectives[1].queue
    for j in range(2):
        torch.testing.assert_close(q_straight.get(j)[0], q_resumed.get(j)[0], rtol=0, atol=0)

    saved = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert not any(k.startswith("teacher.") for k in saved["state_dict"])  # rebuilt from the config
    assert any(k.endswith("queue._extra_state") for k in saved["state_dict"])
    assert saved["vdistill_backbone"]["lora"]["rank"] == 4 and len(saved["vdistill_backbone"]["key_timesteps"]) == 3

    student = load_backbone(ckpt)  # what `vdistill sample --model step2.ckpt` gets: merged, key timesteps
    assert student.defaults.steps == 2 and not any("lora_" in k for k in student.state_dict())
    x, t = torch.randn(1, 3, 4, 8, 8), torch.tensor([0.5])
    text = student.encode_text(PROMPTS[:1])
    with torch.no_grad():
        torch.testing.assert_close(student(x, t, text), first.student(x, t, text), rtol=1e-5, atol=1e-6)

    restored = make(str(toy / "teacher"), "trajectory+adversarial", lora)
    restored.on_load_checkpoint(saved)  # load_from_checkpoint's path: heads built from the stored key timesteps
    restored.load_state_dict(saved["state_dict"], strict=False)
    assert torch.equal(restored.objectives[1].queue.get(0)[0], first.objectives[1].queue.get(0)[0])
    del saved["state_dict"][next(k for k in saved["state_dict"] if k.startswith("discriminator."))]
    with pytest.raises(UserError, match="missing.*discriminator.heads"):
        make(str(toy / "teacher"), "trajectory+adversarial", lora).on_load_checkpoint(saved)


def test_toy_recipe_through_the_cli(toy, tmp_path, monkeypatch, capsys):
    from vdistill.cli import main

    monkeypatch.chdir(tmp_path)
    recipe = str(ROOT / "experiments/toy/accvideo/accvideo.yaml")
    with pytest.raises(SystemExit):
        main(["fit", "--config", recipe, "--print_config"])
    printed = capsys.readouterr().out
    assert "teacher: toy-flow" in printed and "AdversarialAlignment" in printed
    heldout = str(ROOT / "experiments/toy/accvideo/heldout.yaml")
    main(["fit", "--config", recipe, "--config", heldout, f"--model.init_args.teacher={toy / 'teacher'}",
          f"--data.init_args.root={toy / 'data'}", f"--data.init_args.val_root={toy / 'val'}",
          "--data.init_args.batch_size=2", "--trainer.max_steps=1", "--trainer.logger=false",
          "--trainer.enable_progress_bar=false"])
    export = tmp_path / "runs/toy/accvideo/m2_traj_adv/export"
    student = load_backbone(export)
    assert student.defaults.steps == 2 and student.defaults.cfg == 1.0
    assert (tmp_path / "runs/toy/accvideo/m2_traj_adv/checkpoints/last.ckpt").is_file()


@pytest.mark.parametrize("fragments, run, steps", [
    (["dmd.yaml"], "m2", 2), (["dmd.yaml", "dmd_traj.yaml"], "m2_traj", 2), (["dmd.yaml", "dmd_gan.yaml"], "m2_gan", 2),
    (["dmd.yaml", "dmd_1step.yaml"], "m1", 1), (["dmd.yaml", "dmd_4step.yaml"], "m4", 4)])
def test_toy_dmd_recipe_through_the_cli(fragments, run, steps, toy, tmp_path, monkeypatch):
    """experiments/toy/dmd/dmd.yaml (+ each fragment of `make dmd`) on accvideo.yaml: one student step, one
    fake-score-only step; the export samples in the fragment's number of steps."""
    from vdistill.cli import main

    monkeypatch.chdir(tmp_path)
    configs = [arg for f in fragments for arg in ("--config", str(ROOT / "experiments/toy/dmd" / f))]
    main(["fit", "--config", str(ROOT / "experiments/toy/accvideo/accvideo.yaml"), *configs,
          f"--model.init_args.teacher={toy / 'teacher'}", f"--data.init_args.root={toy / 'data'}",
          "--data.init_args.batch_size=2", "--trainer.max_steps=2", "--trainer.logger=false",
          "--trainer.enable_progress_bar=false"])
    student = load_backbone(tmp_path / f"runs/toy/dmd/{run}/export")
    assert student.defaults.steps == steps and student.defaults.cfg == 1.0
    saved = torch.load(tmp_path / f"runs/toy/dmd/{run}/checkpoints/last.ckpt", map_location="cpu",
                       weights_only=True)
    assert saved["global_step"] == 2 and any(k.startswith("objectives.0.fake_score.") for k in saved["state_dict"])
