"""The EMA callback: diffusers' EMAModel schedule, trainable weights only, exact resume, the swap rule (evaluation and
export see the average, checkpoints the online weights), and its user errors."""

from __future__ import annotations

from types import SimpleNamespace

import lightning as L
import pytest
import torch
from callback_helpers import distillation, fit
from objective_helpers import tiny_toy

from vdistill.backbones.io import load_backbone
from vdistill.backbones.student import make_student
from vdistill.callbacks import EMA, ExportBackbone, use_ema
from vdistill.errors import UserError


def holder(**backbones) -> L.LightningModule:
    module = L.LightningModule()
    for name, b in backbones.items():
        setattr(module, name, b)
    return module


@pytest.mark.parametrize("start_step", [0, 3])
def test_schedule_matches_diffusers_ema_model(start_step):
    from diffusers.training_utils import EMAModel

    student = make_student(tiny_toy(), "lora", lora_rank=2)
    module = holder(student=student)
    trainable = [p for p in student.parameters() if p.requires_grad]
    cb = EMA(decay=0.9, start_step=start_step)
    trainer = SimpleNamespace(global_step=0)
    cb.on_fit_start(trainer, module)
    cb.on_train_start(trainer, module)
    reference = EMAModel(trainable, decay=0.9, update_after_step=start_step)
    assert all("lora_" in n for n in cb.averaged())  # the frozen base weights are not averaged
    assert len(cb.averaged()) == len(trainable)
    g = torch.Generator().manual_seed(0)
    for step in range(1, 40):
        with torch.no_grad():
            for p in trainable:
                p.add_(torch.randn(p.shape, generator=g) * 0.1)
        trainer.global_step = step
        cb.catch_up(trainer, module)
        cb.catch_up(trainer, module)  # idempotent within a step
        reference.step(trainable)
        if step > start_step:
            for avg, ref in zip(cb.averaged().values(), reference.shadow_params):
                torch.testing.assert_close(avg, ref, rtol=1e-6, atol=1e-7)
    n = cb.num_updates
    assert n == 39 - start_step and cb.current_decay() == pytest.approx(min(0.9, (1 + n) / (10 + n)))


def test_swap_for_evaluation_is_exact_and_reentrant():
    student = make_student(tiny_toy(), "full")
    module = holder(student=student)
    trainable = {n: p for n, p in student.named_parameters() if p.requires_grad}
    cb = EMA(decay=0.5, warmup=False)
    trainer = SimpleNamespace(global_step=0, callbacks=[cb])
    cb.on_fit_start(trainer, module)
    cb.on_train_start(trainer, module)
    online = {n: p.detach().clone() for n, p in trainable.items()}

    def step(k):
        with torch.no_grad():
            for p in trainable.values():
                p.add_(1.0)
        trainer.global_step = k

    step(1)
    with use_ema(trainer, module) as used, use_ema(trainer, module):  # catches up with step 1 first
        assert used
        for n, p in trainable.items():  # the first update copies the weights
            torch.testing.assert_close(p, online[n] + 1.0)
    step(2)
    cb.catch_up(trainer, module)
    before = {n: p.detach().clone() for n, p in trainable.items()}
    cb.on_validation_epoch_start(trainer, module)
    for n, p in trainable.items():  # 0.5 (x + 1) + 0.5 (x + 2)
        torch.testing.assert_close(p, online[n] + 1.5)
    cb.on_validation_epoch_end(trainer, module)
    for n, p in trainable.items():
        assert torch.equal(p, before[n])  # swapped back exactly
    with use_ema(SimpleNamespace(callbacks=[]), module) as used:
        assert not used


def test_resume_is_exact_and_export_uses_the_average(toy, tmp_path):
    def run(max_steps, ckpt_path=None, callbacks=()):
        L.seed_everything(0)
        model = distillation(toy)
        cb = EMA(decay=0.8)
        trainer = fit(model, toy, tmp_path, [cb, *callbacks], max_steps=max_steps, ckpt_path=ckpt_path)
        return model, cb, trainer

    straight, ema_straight, _ = run(3, callbacks=[ExportBackbone(str(tmp_path / "export"))])
    first, ema_first, trainer = run(2)
    ckpt = tmp_path / "step2.ckpt"
    trainer.save_checkpoint(ckpt)
    resumed, ema_resumed, trainer = run(3, ckpt_path=str(ckpt))
    assert trainer.global_step == 3 and ema_resumed.num_updates == ema_straight.num_updates == 3
    for name, avg in ema_straight.averaged().items():
        torch.testing.assert_close(ema_resumed.averaged()[name], avg, rtol=0, atol=0)

    saved = torch.load(ckpt, map_location="cpu", weights_only=True)
    state = next(v for k, v in saved["callbacks"].items() if k.startswith("EMA"))
    assert state["num_updates"] == 2 and set(state["averaged"]) == set(ema_first.averaged())
    online = dict(first.student.named_parameters())
    name = next(iter(state["averaged"]))
    assert torch.equal(saved["state_dict"][f"student.{name}"], online[name].detach())  # checkpoints: online
    assert not torch.equal(state["averaged"][name], online[name].detach())

    exported = dict(load_backbone(tmp_path / "export").named_parameters())  # the export: the average
    for name, avg in ema_straight.averaged().items():
        torch.testing.assert_close(exported[name], avg, rtol=0, atol=0)
    assert not torch.equal(exported[name], dict(straight.student.named_parameters())[name])


def test_user_errors(toy):
    with pytest.raises(UserError, match=r"decay must be in \[0, 1\), got 1.5"):
        EMA(decay=1.5)
    with pytest.raises(UserError, match="every_n_steps must be >= 1, got 0"):
        EMA(every_n_steps=0)
    module = holder(backbone=tiny_toy())
    trainer = SimpleNamespace(strategy=SimpleNamespace())
    with pytest.raises(UserError, match="no backbone attribute 'student'; valid choices: backbone"):
        EMA(attr="student").setup(trainer, module, "fit")
    sharded = SimpleNamespace(strategy=type("FSDPStrategy", (), {})())
    with pytest.raises(UserError, match="FSDPStrategy.*valid strategies"):
        EMA().setup(sharded, module, "fit")
    lora = EMA()
    lora.on_fit_start(None, holder(student=make_student(tiny_toy(), "lora", lora_rank=2)))
    full = EMA()
    full.on_fit_start(None, holder(student=make_student(tiny_toy(), "full")))
    with pytest.raises(UserError, match="EMA does not match.*LoRA rank"):
        full.load_state_dict(lora.state_dict())
