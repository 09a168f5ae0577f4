"""Students made from a teacher: full copies and LoRA (trainable set, merging, adapter-only weights, exports)."""

from __future__ import annotations

import pytest
import torch
from objective_helpers import tiny_toy

from vdistill.backbones.io import load_backbone, save_backbone
from vdistill.backbones.student import is_lora, load_lora_state_dict, lora_state_dict, make_student, merge_lora
from vdistill.errors import UserError
from vdistill.sampling.sampler import sample_latents


def probe(model):
    torch.manual_seed(5)
    x = torch.randn(2, 3, 4, 8, 8)
    t = torch.tensor([0.9, 0.3])
    text = model.encode_text(["a red circle moving left", "a blue square moving up"])
    with torch.no_grad():
        return model(x, t, text)


def perturb(params, std: float = 0.05) -> None:
    with torch.no_grad():
        for p in params:
            p.add_(torch.randn_like(p) * std)


def test_full_student_is_a_trainable_copy_sharing_the_frozen_parts():
    teacher = tiny_toy()
    student = make_student(teacher)
    assert student.text_encoder is teacher.text_encoder  # shared, not copied
    assert student.denoiser is not teacher.denoiser
    trainable = {n for n, p in student.named_parameters() if p.requires_grad}
    assert trainable == {f"denoiser.{n}" for n, _ in student.denoiser.named_parameters()}
    torch.testing.assert_close(probe(student), probe(teacher))
    before = probe(teacher)
    perturb(student.denoiser.parameters())
    assert torch.equal(probe(teacher), before) and not torch.allclose(probe(student), before)
    with pytest.raises(UserError, match="student mode 'half'"):
        make_student(teacher, mode="half")


def test_lora_student_trains_adapters_only_and_merges_exactly():
    teacher = tiny_toy()
    student = make_student(teacher, mode="lora", lora_rank=4, lora_alpha=8, guidance_embedding=True)
    trainable = [n for n, p in student.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n or n.startswith("guidance_proj.") for n in trainable)
    assert any(n.startswith("guidance_proj.") for n in trainable)
    adapted = {n.split(".lora_")[0] for n in trainable if "lora_" in n}
    linear_conv = {f"denoiser.{n}" for n, m in teacher.denoiser.named_modules()
                   if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))}
    assert adapted == linear_conv  # the toy default: every Linear and Conv2d of the denoiser
    torch.testing.assert_close(probe(student), probe(teacher))  # zero-initialised B: unchanged at start

    perturb([p for n, p in student.named_parameters() if "lora_B" in n])
    unmerged = probe(student)
    assert not torch.allclose(unmerged, probe(teacher))
    state = lora_state_dict(student)
    assert state and all("lora_" in k or k.startswith("guidance_proj.") for k in state)
    assert not any(".default." in k for k in state)

    other = make_student(teacher, mode="lora", lora_rank=4, lora_alpha=8, guidance_embedding=True)
    load_lora_state_dict(other, state)
    torch.testing.assert_close(probe(other), unmerged)

    merge_lora(student)
    assert not is_lora(student)
    assert not any("lora_" in k or "base_layer" in k for k in student.state_dict())
    torch.testing.assert_close(probe(student), unmerged, rtol=1e-5, atol=1e-6)

    with pytest.raises(UserError, match="do not match"):
        load_lora_state_dict(make_student(teacher, mode="lora", lora_rank=2, target_modules=["film"]), state)


def test_exported_lora_student_loads_as_a_plain_backbone_sampling_its_key_timesteps(tmp_path):
    teacher = tiny_toy()
    student = make_student(teacher, mode="lora", lora_rank=4)
    perturb([p for n, p in student.named_parameters() if "lora_B" in n])
    keys = teacher.schedule.sampling_timesteps(6)[[0, 3, 6]].tolist()
    student.set_key_timesteps(keys)
    assert student.defaults.steps == 2 and student.defaults.cfg == 1.0
    save_backbone(student, tmp_path / "export")
    loaded = load_backbone(tmp_path / "export")
    assert not is_lora(loaded) and loaded.key_timesteps == tuple(keys)
    assert loaded.defaults.steps == 2 and loaded.defaults.cfg == 1.0
    torch.testing.assert_close(probe(loaded), probe(student), rtol=1e-5, atol=1e-6)

    noise = torch.randn(1, 3, 4, 8, 8)
    text = loaded.encode_text(["a red circle moving left"])
    res = sample_latents(loaded, noise, text)  # its own steps: along the key timesteps, not the native grid
    torch.testing.assert_close(res.timesteps, torch.tensor(keys))
    native = sample_latents(loaded, noise, text, steps=3)
    torch.testing.assert_close(native.timesteps, loaded.schedule.sampling_timesteps(3))


def test_student_of_a_guided_teacher_gets_its_own_guidance_embedding():
    teacher = tiny_toy()
    teacher.enable_guidance_embedding().weight.data.normal_(std=0.1)
    teacher.requires_grad_(False)
    student = make_student(teacher)
    assert student.guidance_proj is not teacher.guidance_proj and student.guidance_proj.weight.requires_grad
    x, t = torch.randn(1, 3, 4, 8, 8), torch.tensor([0.5])
    text, w = teacher.encode_text(["a red circle moving left"]), torch.tensor([3.0])
    with torch.no_grad():
        torch.testing.assert_close(student(x, t, text, w), teacher(x, t, text, w))
        before = teacher(x, t, text, w)
        student.guidance_proj.weight.mul_(5)
        assert torch.equal(teacher(x, t, text, w), before)  # the copied hook no longer reads the teacher's
        assert not torch.allclose(student(x, t, text, w), before)


def _loss_and_grads(student, x, t, text, w):
    student.zero_grad(set_to_none=True)
    torch.manual_seed(1)  # ModelScope's temporal convs have dropout: the same masks in both runs
    loss = student(x, t, text, w).float().square().mean()
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in student.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("case", ["toy-full", "toy-lora", "modelscope", "wan"])
def test_gradient_checkpointing_keeps_loss_and_gradients(case, request):
    """The student recomputes its blocks in backward (more forward calls) and gets the same loss and gradients;
    the teacher is left without checkpointing."""
    if case.startswith("toy"):
        teacher, shape, t = tiny_toy(), (2, 3, 4, 8, 8), torch.tensor([0.9, 0.3])
    else:
        from vdistill.backbones.modelscope import ModelScopeBackbone
        from vdistill.backbones.wan import WanBackbone

        cls = ModelScopeBackbone if case == "modelscope" else WanBackbone
        teacher = cls(str(request.getfixturevalue(f"{case}_dir")))
        shape, t = (2, *teacher.latent_shape(2 if case == "modelscope" else 5, 32, 32)), torch.tensor([900.0, 300.0])
        if case == "wan":
            t = t / 1000
    lora = {"mode": "lora", "lora_rank": 4} if case == "toy-lora" else {}
    torch.manual_seed(0)
    x, w = torch.randn(shape), torch.tensor([2.0, 5.0])
    text = teacher.encode_text(["a red circle moving left", "a blue square moving up"])
    students = [make_student(teacher, guidance_embedding=True, gradient_checkpointing=ckpt, **lora)
                for ckpt in (False, True)]
    students[1].load_state_dict(students[0].state_dict())
    calls = []
    for student in students:
        count = [0]
        hooks = [m.register_forward_hook(lambda *_, c=count: c.__setitem__(0, c[0] + 1))
                 for m in student.denoiser.modules()]
        loss, grads = _loss_and_grads(student, x, t, text, w)
        for h in hooks:
            h.remove()
        calls.append((count[0], loss, grads))
    (n_plain, loss_plain, grads_plain), (n_ckpt, loss_ckpt, grads_ckpt) = calls
    assert n_ckpt > n_plain  # the checkpointed blocks ran again in backward
    torch.testing.assert_close(loss_ckpt, loss_plain, rtol=0, atol=0)
    assert grads_plain.keys() == grads_ckpt.keys() and any(n.startswith("guidance_proj.") for n in grads_plain)
    for name, g in grads_plain.items():
        torch.testing.assert_close(grads_ckpt[name], g, rtol=1e-6, atol=1e-7, msg=name)
    assert not any(getattr(m, "gradient_checkpointing", False) or "forward" in vars(m)
                   for m in teacher.denoiser.modules())


def test_a_student_of_a_checkpointed_teacher_checkpoints_its_own_blocks():
    teacher = tiny_toy()
    teacher.enable_gradient_checkpointing()
    student = make_student(teacher)
    for mine, theirs in zip(student.denoiser.blocks, teacher.denoiser.blocks):
        assert mine.forward.args[0] is mine and theirs.forward.args[0] is theirs


def test_a_lora_student_of_a_bf16_teacher_trains_in_float32():
    """bf16 adapters would not move: an AdamW step of 1e-5 is below bf16's spacing for weights above ~2.6e-3."""
    teacher = tiny_toy().to(torch.bfloat16)
    student = make_student(teacher, "lora", lora_rank=4, guidance_embedding=True)
    trainable = {n: p for n, p in student.named_parameters() if p.requires_grad}
    assert trainable and all(p.dtype == torch.float32 for p in trainable.values())
    assert all(p.dtype == torch.bfloat16 for n, p in student.named_parameters() if not p.requires_grad)
    x = torch.randn(2, *teacher.latent_shape(4, 8, 8), dtype=torch.bfloat16)
    t, w = torch.tensor([0.7, 0.3]), torch.tensor([2.0, 5.0])
    text = teacher.encode_text(["a red circle moving left", "a blue square moving up"])
    out = student(x, t, text, w)
    assert out.dtype == torch.bfloat16
    with torch.no_grad():
        torch.testing.assert_close(out, teacher(x, t, text))  # zero-initialised B and projection
    lora_a = {n: p.detach().clone() for n, p in trainable.items() if "lora_A" in n}
    optimizer = torch.optim.AdamW(trainable.values(), lr=1e-5, weight_decay=0.0)
    for _ in range(2):  # B moves first (A's gradient is zero while B is), then A
        optimizer.zero_grad()
        student(x, t, text, w).float().square().mean().backward()
        optimizer.step()
    moved = [n for n, before in lora_a.items() if not torch.equal(trainable[n], before)]
    assert len(moved) == len(lora_a)
