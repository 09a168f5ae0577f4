"""``frozen_dtype: bfloat16``: every frozen weight (teacher, text encoder, a LoRA base, critics) in bf16, half the
bytes, the trainable weights in float32, the VAE in its configured dtype; fit steps under ``bf16-mixed`` run and
train; the default leaves every dtype as loaded."""

from __future__ import annotations

import pytest
import torch
from objective_helpers import tiny_toy
from speed_helpers import fit, param_bytes

from vdistill.backbones.student import StudentConfig
from vdistill.critics import load_critic
from vdistill.modules.distill import Distillation
from vdistill.objectives import TrajectoryGuidance
from vdistill.objectives.reward import RewardFeedback

pytestmark = pytest.mark.filterwarnings("ignore:critic .* has no checkpoint")


def toy_critics() -> dict:
    torch.manual_seed(0)
    return {"img": load_critic("toy-image", size="tiny", num_frames=2), "vid": load_critic("toy-video", size="tiny")}


def distillation(teacher, mode: str, frozen_dtype: str | None) -> Distillation:
    student = StudentConfig(mode=mode, lora_rank=4, guidance_embedding=True)
    return Distillation(teacher, [TrajectoryGuidance(), RewardFeedback({"img": 1.0, "vid": 1.0}, weight=0.1)],
                        student=student, critics=toy_critics(), lr=1e-3, frozen_dtype=frozen_dtype)


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_frozen_weights_take_half_the_bytes_and_trainable_ones_stay_float32(toy_world, mode):
    plain = distillation(str(toy_world / "teacher"), mode, None)
    half = distillation(str(toy_world / "teacher"), mode, "bfloat16")
    assert {p.dtype for p in plain.parameters()} == {torch.float32}
    assert param_bytes(half, trainable=False) * 2 == param_bytes(plain, trainable=False)
    assert param_bytes(half, trainable=True) == param_bytes(plain, trainable=True)
    assert {p.dtype for p in half.parameters() if p.requires_grad} == {torch.float32}
    assert {p.dtype for p in half.parameters() if not p.requires_grad} == {torch.bfloat16}
    for part in (half.teacher, half.critics, half.student.text_encoder):
        assert {p.dtype for p in part.parameters()} == {torch.bfloat16}
    if mode == "lora":  # the student's base is the teacher's copy, frozen: bf16 beside float32 adapters
        dtypes = {n: p.dtype for n, p in half.student.denoiser.named_parameters()}
        assert {d for n, d in dtypes.items() if "lora_" in n} == {torch.float32}
        assert {d for n, d in dtypes.items() if "lora_" not in n} == {torch.bfloat16}


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_a_bf16_mixed_fit_step_trains_the_float32_weights(toy_world, mode):
    model = distillation(str(toy_world / "teacher"), mode, "bfloat16")
    trainable = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    trainer = fit(model, toy_world / "data", max_steps=2, precision="bf16-mixed")
    assert torch.isfinite(trainer.callback_metrics["loss/total"])
    after = dict(model.named_parameters())
    assert all(after[n].dtype == torch.float32 for n in trainable)
    assert any(not torch.equal(after[n], v) for n, v in trainable.items())
    assert all(after[n].dtype == torch.bfloat16 and torch.equal(after[n], v) for n, v in frozen.items())


def test_a_bf16_teacher_gets_a_float32_full_student():
    """A teacher loaded in bf16 (``torch_dtype: bfloat16``) would give a full student bf16 trainable weights, too
    coarse for AdamW's small steps; with frozen_dtype the student is trained in float32."""
    teacher = tiny_toy().to(torch.bfloat16)
    model = Distillation(teacher, [TrajectoryGuidance()], frozen_dtype="bfloat16")
    assert {p.dtype for p in model.student.denoiser.parameters()} == {torch.float32}
    assert {p.dtype for p in model.teacher.parameters()} == {torch.bfloat16}


def test_the_wan_vae_keeps_its_dtype_and_rotary_tables_of_a_full_student_are_untouched(request):
    from vdistill.backbones.wan import WanBackbone

    teacher = WanBackbone(str(request.getfixturevalue("wan_dir")))
    model = Distillation(teacher, [TrajectoryGuidance()], frozen_dtype="bfloat16")
    assert {p.dtype for p in model.teacher.vae.parameters()} == {torch.float32}
    assert {p.dtype for p in model.teacher.denoiser.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in model.teacher.text_encoder.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in model.student.denoiser.parameters()} == {torch.float32}
    student_buffers = {n: b.dtype for n, b in model.student.denoiser.named_buffers()}
    fresh = {n: b.dtype for n, b in WanBackbone(str(request.getfixturevalue("wan_dir"))).denoiser.named_buffers()}
    assert student_buffers == fresh
    # one training forward under autocast, as bf16-mixed runs it: the bf16 teacher and the float32 student together
    x = torch.randn(2, *teacher.latent_shape(5, 32, 32))
    text = teacher.encode_text(["a red ball", "a blue dog"])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with torch.no_grad():
            target = model.teacher(x, torch.tensor([0.9, 0.4]), text)
        loss = (model.student(x, torch.tensor([0.9, 0.4]), text).float() - target.float()).square().mean()
    loss.backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in model.student.denoiser.parameters())
