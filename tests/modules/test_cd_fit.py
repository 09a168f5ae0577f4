"""Consistency distillation in the distillation module: one fit step per teacher family on real clips, the EMA
target, adapter-only LoRA checkpoints, ``vdistill export`` and ``vdistill sample`` of the result, the toy recipe."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from objective_helpers import PROMPTS, tiny_toy

from vdistill.backbones.io import load_backbone, save_backbone
from vdistill.backbones.student import StudentConfig, make_student
from vdistill.data.toy import ToyVideos
from vdistill.diffusion.schedules import DDPMSchedule, FlowSchedule
from vdistill.errors import UserError
from vdistill.modules.distill import Distillation
from vdistill.objectives import ConsistencyDistillation, Models
from vdistill.roles.ema import EMAWeights
from vdistill.sampling.consistency import sample_consistency, seeded_noise
from vdistill.sampling.video_io import load_npz

ROOT = Path(__file__).resolve().parents[2]
TOY = {"ddpm-eps": lambda: DDPMSchedule(beta_schedule="squaredcos_cap_v2", clip_sample=1.0),
       "ddpm-v": lambda: DDPMSchedule(prediction_type="v_prediction"), "flow": lambda: FlowSchedule(shift=3.0)}
LORA = StudentConfig(mode="lora", lora_rank=4, guidance_embedding=True)


@pytest.fixture(scope="module")
def teachers(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cd_teachers")
    return {kind: save_backbone(tiny_toy(schedule()), root / kind) for kind, schedule in TOY.items()}


def make(teacher, student: StudentConfig = StudentConfig(guidance_embedding=True), **kw) -> Distillation:
    return Distillation(teacher, [ConsistencyDistillation(w_min=1.0, w_max=3.0, guidance=2.0)], student=student,
                        lr=1e-3, **kw)


def fit(model, max_steps: int, frames: int = 4, size: int = 8, callbacks=(), ckpt_path=None) -> L.Trainer:
    trainer = L.Trainer(max_steps=max_steps, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=list(callbacks))
    trainer.fit(model, datamodule=ToyVideos(batch_size=2, num_frames=frames, size=size), ckpt_path=ckpt_path)
    return trainer


def params(module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


@pytest.mark.parametrize("kind", list(TOY))
def test_fit_toy(teachers, kind):
    model = make(str(teachers[kind]))
    teacher_before, student_before = params(model.teacher), params(model.student.denoiser)
    trainer = fit(model, max_steps=2)
    assert {"loss/cd", "loss/total", "cd/w", "cd/t"} <= set(trainer.callback_metrics)
    assert 1.0 <= trainer.callback_metrics["cd/w"] <= 3.0
    assert all(torch.equal(a, b) for a, b in zip(teacher_before, params(model.teacher)))
    assert not all(torch.equal(a, b) for a, b in zip(student_before, params(model.student.denoiser)))
    assert model.student.guidance_proj.weight.abs().sum() > 0  # zero-initialised, trained
    assert model.student.vdistill_sampler["kind"] == "consistency" and model.student.defaults.cfg == 1.0
    assert trainer.num_sanity_val_batches == [] and trainer.num_val_batches == []  # no loop over ToyVideos' val set


@pytest.mark.parametrize("family", ["modelscope", "wan"])
def test_fit_diffusers_teachers_and_export(family, request, tmp_path):
    """ModelScope with a LoRA student (T2V-Turbo MS), Wan fully fine-tuned; the LoRA checkpoint is adapter-only
    and ``vdistill export`` writes the merged UNet in the diffusers layout too, its guidance scale folded in."""
    from vdistill.backbones.modelscope import ModelScopeBackbone
    from vdistill.backbones.wan import WanBackbone
    from vdistill.cli import main

    cls, frames = (ModelScopeBackbone, 2) if family == "modelscope" else (WanBackbone, 5)
    model = make(cls(str(request.getfixturevalue(f"{family}_dir"))), LORA if family == "modelscope" else
                 StudentConfig(guidance_embedding=True))
    trainer = fit(model, max_steps=1, frames=frames, size=32)
    assert trainer.callback_metrics["loss/cd"].isfinite()
    if family == "wan":
        return
    trainer.save_checkpoint(tmp_path / "ms.ckpt")
    saved = torch.load(tmp_path / "ms.ckpt", map_location="cpu", weights_only=True)
    assert saved["vdistill_teacher"]["init_args"]["path"] == str(request.getfixturevalue("modelscope_dir"))
    keys = [k for k in saved["state_dict"] if k.startswith("student.")]
    assert keys and all("lora_" in k or k.startswith("student.guidance_proj.") for k in keys)
    assert "student.guidance_proj.weight" in keys

    main(["export", "--ckpt", str(tmp_path / "ms.ckpt"), "--out", str(tmp_path / "export")])
    loaded = load_backbone(tmp_path / "export")
    from diffusers import UNet3DConditionModel

    from vdistill.backbones.pipeline_export import guidance_fold

    unet = UNet3DConditionModel.from_pretrained(str(tmp_path / "export" / "unet"))
    folded, delta = guidance_fold(loaded)  # the student's fixed guidance scale, as a bias of the time embedding
    for k, v in loaded.denoiser.state_dict().items():
        torch.testing.assert_close(unet.state_dict()[k], v + delta if k == f"{folded}.bias" else v)
    x, t = torch.randn(1, *loaded.latent_shape(2, 32, 32)), torch.tensor([500.0])
    text, w = loaded.encode_text(["a cat"]), torch.tensor([2.0])
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, t, text, w), model.student(x, t, text, w), rtol=1e-4, atol=1e-5)


def test_ema_target_is_an_average_of_the_trainable_weights_only():
    student = make_student(tiny_toy(DDPMSchedule()), mode="lora", lora_rank=4, guidance_embedding=True)
    ema = EMAWeights(student, decay=0.9)
    assert set(ema.names) == {n for n, p in student.named_parameters() if p.requires_grad}
    before = {n: v.clone() for n, v in ema.averaged().items()}
    with torch.no_grad():
        for p in student.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.1)
    ema.update(student)
    now = dict(student.named_parameters())
    for n, v in ema.averaged().items():
        torch.testing.assert_close(v, 0.9 * before[n] + 0.1 * now[n].detach())

    x, t, w = torch.randn(2, 3, 4, 8, 8), torch.tensor([999.0, 259.0]), torch.tensor([2.0, 7.0])
    text = student.encode_text(PROMPTS[:2])
    models = Models(student=student, teacher=None, target=ema)
    with torch.no_grad():
        got, online = models.target_raw(x, t, text, w), student(x, t, text, w)
        assert not torch.allclose(got, online)
        own = {n: p.clone() for n, p in student.named_parameters() if n in ema.names}
        for n, p in student.named_parameters():  # what the target must be: the averaged weights loaded
            if n in ema.names:
                p.copy_(ema.averaged()[n])
        torch.testing.assert_close(got, student(x, t, text, w))
        for n, p in student.named_parameters():
            if n in own:
                p.copy_(own[n])
        torch.testing.assert_close(student(x, t, text, w), online)


def test_ema_target_follows_the_student_once_per_optimizer_step(teachers):
    model = make(str(teachers["ddpm-eps"]), target_ema_decay=0.5)
    history = [{n: p.detach().clone() for n, p in model.student.named_parameters() if p.requires_grad}]

    class Record(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, *args):
            history.append({n: p.detach().clone() for n, p in pl_module.student.named_parameters() if p.requires_grad})

    fit(model, max_steps=2, callbacks=[Record()])
    for n, avg in model.target.averaged().items():
        expected = 0.5 * (0.5 * history[0][n] + 0.5 * history[1][n]) + 0.5 * history[2][n]
        torch.testing.assert_close(avg, expected)
    assert not torch.equal(model.target.averaged()["guidance_proj.weight"], history[2]["guidance_proj.weight"])


def test_lora_student_checkpoint_export_and_sample(teachers, tmp_path, monkeypatch):
    """Adapter-only checkpoint (adapters + guidance projection) -> ``vdistill export`` (merged) equals the unmerged
    student with and without guidance; ``vdistill sample --steps 2`` uses the consistency sampler and its w."""
    from vdistill.cli import main

    model = make(str(teachers["ddpm-eps"]), LORA)
    trainer = fit(model, max_steps=2)
    trainer.save_checkpoint(tmp_path / "cd.ckpt")
    saved = torch.load(tmp_path / "cd.ckpt", map_location="cpu", weights_only=True)
    student_keys = {k for k in saved["state_dict"] if k.startswith("student.")}
    trained = {f"student.{n}" for n, p in model.student.named_parameters() if p.requires_grad}
    assert student_keys == trained and "student.guidance_proj.weight" in student_keys
    assert saved["vdistill_teacher"] == str(teachers["ddpm-eps"].resolve())
    assert saved["vdistill_backbone"]["sampler"]["guidance"] == 2.0

    main(["export", "--ckpt", str(tmp_path / "cd.ckpt"), "--out", str(tmp_path / "export")])
    loaded = load_backbone(tmp_path / "export")
    assert not any("lora_" in k for k in loaded.state_dict()) and loaded.has_guidance_embedding
    x, t = torch.randn(2, 3, 4, 8, 8), torch.tensor([999.0, 259.0])
    text = loaded.encode_text(PROMPTS[:2])
    with torch.no_grad():
        for w in (None, torch.tensor([2.0, 3.0])):
            torch.testing.assert_close(loaded(x, t, text, w), model.student(x, t, text, w), rtol=1e-5, atol=1e-6)

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS[:2]))
    main(["sample", "--model", str(tmp_path / "export"), "--steps", "2", "--prompts", str(prompts),
          "--out", str(tmp_path / "samples"), "--mp4", "0"])
    videos, _ = load_npz(tmp_path / "samples" / "videos.npz")
    noise, gens = seeded_noise((3, 4, 8, 8), [0, 1])
    ref = sample_consistency(model.student.eval(), noise, text, steps=2, guidance=2.0, generators=gens)
    torch.testing.assert_close(videos, model.student.decode_latents(ref.latents), rtol=0, atol=1 / 255 + 1e-6)

    resumed = make(str(teachers["ddpm-eps"]), LORA)  # resuming from adapter-only weights
    assert fit(resumed, max_steps=3, ckpt_path=str(tmp_path / "cd.ckpt")).global_step == 3


def test_consistency_distillation_needs_real_clips(teachers):
    class PromptsOnly(L.LightningDataModule):
        def train_dataloader(self):
            return [PROMPTS]

    trainer = L.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    with pytest.raises(UserError, match=r"ConsistencyDistillation needs videos.*ToyVideos.*the data is PromptsOnly"):
        trainer.fit(make(str(teachers["ddpm-eps"])), datamodule=PromptsOnly())


def test_toy_recipe_through_the_cli(teachers, tmp_path, monkeypatch, capsys):
    from vdistill.cli import main

    monkeypatch.chdir(tmp_path)
    recipe = str(ROOT / "experiments/toy/turbo/turbo.yaml")
    with pytest.raises(SystemExit):
        main(["fit", "--config", recipe, "--print_config"])
    printed = capsys.readouterr().out
    assert "teacher: toy-ddpm" in printed and "ConsistencyDistillation" in printed
    main(["fit", "--config", recipe, f"--model.init_args.teacher={teachers['ddpm-eps']}",
          "--data.init_args.batch_size=2", "--data.init_args.num_frames=4", "--data.init_args.size=8",
          "--trainer.max_steps=1", "--trainer.logger=false", "--trainer.enable_progress_bar=false"])
    student = load_backbone(tmp_path / "runs/toy/turbo/cd/export")
    assert student.vdistill_sampler == {"kind": "consistency", "guidance": 2.0, "original_steps": 50, "steps": 4}
    assert student.defaults.steps == 4 and student.defaults.cfg == 1.0 and student.has_guidance_embedding
