"""Selective activation checkpointing (``checkpoint_every: k``): the same loss and gradients as without
checkpointing, every k-th block recomputed in backward, fewer bytes saved for backward than without, more than
with every block checkpointed; for the toy UNet, ModelScope's UNet3D and the Wan / HunyuanVideo transformers."""

from __future__ import annotations

import pytest
import torch
from objective_helpers import tiny_toy

from vdistill.backbones.student import make_student
from vdistill.errors import UserError

PROMPTS = ["a red circle moving left", "a blue square moving up"]


def teacher_and_inputs(case: str, request):
    """The frozen teacher and a batch of 2: latents ``[2, C, T, H, W]``, schedule times ``[2]``."""
    if case == "toy":
        return tiny_toy(), (2, 3, 4, 8, 8), torch.tensor([0.9, 0.3])
    if case == "hunyuan":
        from vdistill.backbones.hunyuan import HunyuanVideoBackbone

        teacher = HunyuanVideoBackbone(str(request.getfixturevalue("hunyuan_pipeline_dir")))
        return teacher, (2, *teacher.latent_shape(5, 32, 32)), torch.tensor([0.9, 0.3])
    if case == "modelscope":
        from vdistill.backbones.modelscope import ModelScopeBackbone

        teacher = ModelScopeBackbone(str(request.getfixturevalue("modelscope_dir")))
        return teacher, (2, *teacher.latent_shape(2, 32, 32)), torch.tensor([900.0, 300.0])
    from vdistill.backbones.wan import WanBackbone

    teacher = WanBackbone(str(request.getfixturevalue("wan4_dir")))
    return teacher, (2, *teacher.latent_shape(5, 32, 32)), torch.tensor([0.9, 0.3])


def step(student, x, t, text) -> tuple[torch.Tensor, dict, int, list[int]]:
    """Loss, gradients, bytes saved for backward (distinct storages, counted by ``saved_tensors_hooks``) and the
    forward calls of each feature block during forward + backward."""
    student.zero_grad(set_to_none=True)
    storages: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    calls = [0] * len(student.feature_blocks())
    hooks = [block.register_forward_pre_hook(lambda *_, i=i: calls.__setitem__(i, calls[i] + 1))
             for i, block in enumerate(student.feature_blocks())]
    torch.manual_seed(1)  # ModelScope's temporal convs have dropout: the same masks in every run
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            loss = student(x, t, text).float().square().mean()
        loss.backward()
    finally:
        for h in hooks:
            h.remove()
    grads = {n: p.grad.clone() for n, p in student.named_parameters() if p.requires_grad}
    return loss.detach(), grads, sum(storages.values()), calls


@pytest.mark.parametrize("case", ["toy", "modelscope", "wan", "hunyuan"])
def test_every_second_block_keeps_gradients_and_saves_part_of_the_activations(case, request):
    teacher, shape, t = teacher_and_inputs(case, request)
    torch.manual_seed(0)
    x = torch.randn(shape)
    text = teacher.encode_text(PROMPTS)
    configs = {"none": {}, "every2": {"gradient_checkpointing": True, "checkpoint_every": 2},
               "all": {"gradient_checkpointing": True}}
    students = {k: make_student(teacher, **c) for k, c in configs.items()}
    for s in students.values():
        s.load_state_dict(students["none"].state_dict())
    runs = {k: step(s, x, t, text) for k, s in students.items()}
    loss, grads, saved_none, calls = runs["none"]
    n = len(calls)
    assert n >= 2 and calls == [1] * n
    _, _, _, calls_every2 = runs["every2"]
    # diffusers' own loop runs a checkpointed block through __call__ again in backward; our wrapper recomputes its
    # forward only (hooks see one call): either way the unmarked blocks run once
    assert [c for i, c in enumerate(calls_every2) if i % 2] == [1] * (n // 2)
    for key in ("every2", "all"):
        torch.testing.assert_close(runs[key][0], loss, rtol=0, atol=0)
        assert runs[key][1].keys() == grads.keys()
        for name, g in grads.items():
            torch.testing.assert_close(runs[key][1][name], g, rtol=1e-5, atol=1e-6, msg=f"{key}: {name}")
    saved = {k: r[2] for k, r in runs.items()}
    assert saved["all"] < saved["every2"] < saved["none"], saved


def test_the_wan_student_marks_every_kth_block_and_the_teacher_none(request):
    teacher, _, _ = teacher_and_inputs("wan", request)
    student = make_student(teacher, gradient_checkpointing=True, checkpoint_every=3)
    assert [getattr(b, "vdistill_checkpoint", False) for b in student.denoiser.blocks] == [True, False, False, True]
    assert student.denoiser.gradient_checkpointing
    assert not any(getattr(m, "gradient_checkpointing", False) or getattr(m, "vdistill_checkpoint", False)
                   for m in teacher.denoiser.modules())


def test_checkpoint_every_without_checkpointing_or_below_one_is_refused():
    with pytest.raises(UserError, match="set gradient_checkpointing: true"):
        make_student(tiny_toy(), checkpoint_every=2)
    with pytest.raises(UserError, match="checkpoint_every must be >= 1"):
        make_student(tiny_toy(), gradient_checkpointing=True, checkpoint_every=0)
