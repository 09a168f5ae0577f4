"""Consistency distillation: the student's output f and the teacher's solver step against diffusers' LCMScheduler
and DDIMScheduler, the loss against a T2V-Turbo-style manual computation, and where its gradient goes."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler, LCMScheduler
from objective_helpers import PROMPTS, tiny_toy

from vdistill.backbones.student import make_student
from vdistill.diffusion.consistency import consistency_grid, consistency_output
from vdistill.diffusion.schedules import DDPMSchedule, FlowSchedule
from vdistill.errors import UserError
from vdistill.objectives import ConsistencyDistillation, Models, pseudo_huber
from vdistill.objectives.consistency import encode_videos

PREDICTIONS = ["epsilon", "v_prediction", "sample"]


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("clip", [None, 1.0])
@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_student_output_is_lcm_schedulers_denoised(prediction, clip):
    schedule = DDPMSchedule(prediction_type=prediction, clip_sample=clip)
    lcm = LCMScheduler(prediction_type=prediction, clip_sample=clip is not None, clip_sample_range=clip or 1.0)
    lcm.set_timesteps(8, original_inference_steps=50)
    for i, t in enumerate(lcm.timesteps):
        x, raw = randn(2, 3, 2, 4, 4, seed=i), randn(2, 3, 2, 4, 4, seed=100 + i)
        ref = lcm.step(raw, t, x, generator=torch.Generator().manual_seed(0)).denoised
        ours = consistency_output(schedule, raw, x, t.float().expand(2), clip=clip)
        torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("betas,clip", [("scaled_linear", None), ("squaredcos_cap_v2", 1.0)])
@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_teacher_solver_step_is_ddim(prediction, betas, clip):
    """One step of the 50-step grid is DDIM's (trailing grid; the clean end clamps to t = 0, i.e. diffusers'
    set_alpha_to_one=False)."""
    schedule = DDPMSchedule(beta_schedule=betas, prediction_type=prediction, clip_sample=clip)
    ddim = DDIMScheduler(beta_schedule=betas, beta_start=0.00085, beta_end=0.012, prediction_type=prediction,
                         timestep_spacing="trailing", set_alpha_to_one=False, clip_sample=clip is not None,
                         clip_sample_range=clip or 1.0)
    ddim.set_timesteps(50)
    grid = consistency_grid(schedule, 50)
    torch.testing.assert_close(grid[:-1], ddim.timesteps.float())
    for i in (0, 1, 25, 48, 49):
        x, raw = randn(2, 3, 2, 4, 4, seed=i), randn(2, 3, 2, 4, 4, seed=50 + i)
        ref = ddim.step(raw, int(grid[i]), x).prev_sample
        ours = schedule.step(raw, x, grid[i].expand(2), grid[i + 1].expand(2))
        torch.testing.assert_close(ours, ref, rtol=1e-3, atol=5e-4)  # diffusers' cosine betas are float32


def test_pseudo_huber():
    a, b = randn(3, 5, seed=1), randn(3, 5, seed=2)
    torch.testing.assert_close(pseudo_huber(a, b, 0.5), (((a - b) ** 2 + 0.25).sqrt() - 0.5).mean())
    assert pseudo_huber(a, a) == 0


def setup_models(schedule, mode="full"):
    teacher = tiny_toy(schedule)
    student = make_student(teacher, mode=mode, lora_rank=4, guidance_embedding=True)
    with torch.no_grad():  # a student that differs from its teacher, with a live guidance embedding
        student.guidance_proj.weight.normal_(std=0.1)
        for p in student.denoiser.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)
    return teacher, student


def batch(b=2):
    return {"videos": torch.rand(b, 4, 3, 8, 8, generator=torch.Generator().manual_seed(3)), "prompts": PROMPTS[:b]}


def manual_cd(teacher, student, x0, text, uncond, t, t_prev, noise, w, c=0.001):
    """T2V-Turbo's training step written out: x0 and eps of the cond / uncond teacher CFG'd separately (LCM
    convention), a DDIM (or Euler) step, the LCM scalings of diffusers' LCMScheduler."""
    lcm, view = LCMScheduler(), (-1, 1, 1, 1, 1)
    sched = teacher.schedule
    x_t = sched.add_noise(x0, noise, t)
    ww = w.reshape(view)
    with torch.no_grad():
        cond = sched.to_x0_eps(teacher(x_t, t, text), x_t, t)
        unc = sched.to_x0_eps(teacher(x_t, t, {k: v.expand(len(w), -1) for k, v in uncond.items()}), x_t, t)
        x0_hat, eps_hat = (cc + ww * (cc - uu) for cc, uu in zip(cond, unc))
        if sched.kind == "flow":  # Euler with the guided velocity eps - x0
            x_prev = x_t + (t_prev - t).reshape(view) * (eps_hat - x0_hat)
        else:
            x_prev = sched.add_noise(x0_hat, eps_hat, t_prev)

    def f(x, s):
        cs, co = zip(*(lcm.get_scalings_for_boundary_condition_discrete(float(v)) for v in sched.model_timestep(s)))
        raw = student(x, s, text, w)
        return torch.tensor(cs).reshape(view) * x + torch.tensor(co).reshape(view) * sched.to_x0(raw, x, s)

    with torch.no_grad():
        target = f(x_prev, t_prev)
    return pseudo_huber(f(x_t, t), target, c)


@pytest.mark.parametrize("kind,skip", [("ddpm-eps", 20), ("ddpm-v", 40), ("flow", 20)])
def test_loss_and_gradient_match_a_manual_t2v_turbo_step(kind, skip):
    schedule = {"ddpm-eps": DDPMSchedule(), "ddpm-v": DDPMSchedule(prediction_type="v_prediction"),
                "flow": FlowSchedule(shift=3.0)}[kind]
    teacher, student = setup_models(schedule)
    obj = ConsistencyDistillation(skip=skip)
    models = Models(student=student, teacher=teacher)
    clips = encode_videos(batch(3), models)
    n, w = torch.tensor([0, 17, 49]), torch.tensor([5.0, 9.5, 15.0])
    noise = randn(*clips.x0.shape, seed=7)
    out = obj.loss(clips, n, noise, w, models)
    assert set(out) == {"cd", "w", "t"}
    out["cd"].backward()
    got = [p.grad.clone() for p in student.parameters() if p.requires_grad]
    student.zero_grad()

    grid = consistency_grid(schedule, 50)
    t, t_prev = grid[n], grid[(n + skip // 20).clamp(max=50)]
    if kind.startswith("ddpm"):
        torch.testing.assert_close(t, torch.tensor([999.0, 659.0, 19.0]))
        torch.testing.assert_close(t_prev, torch.tensor([999.0 - skip, 659.0 - skip, 0.0]))
    manual = manual_cd(teacher, student, clips.x0, clips.text, clips.uncond, t, t_prev, noise, w)
    torch.testing.assert_close(out["cd"], manual, rtol=2e-4, atol=1e-6)
    manual.backward()
    ours = torch.cat([g.flatten() for g in got])
    ref = torch.cat([p.grad.flatten() for p in student.parameters() if p.requires_grad])
    # x0 = (x - sigma eps) / alpha amplifies float32 rounding at t = 999 (alpha = 0.07): compare on one scale
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-3 * ref.abs().max().item())


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_gradient_reaches_only_the_students_trainable_parameters(mode):
    teacher, student = setup_models(DDPMSchedule(), mode)
    obj = ConsistencyDistillation()
    obj.prepare_student(student)
    models = Models(student=student, teacher=teacher)
    out = obj(batch(), models)
    out["cd"].backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is None for p in student.parameters() if not p.requires_grad)
    assert student.guidance_proj.weight.grad.abs().sum() > 0
    trained = [(n, p) for n, p in student.named_parameters() if p.requires_grad and "lora_A" not in n]
    assert trained and all(p.grad is not None and p.grad.abs().sum() > 0 for _, p in trained)
    if mode == "lora":
        assert all("lora_" in n or n.startswith("guidance_proj.") for n, _ in trained)
    # the one-step clean estimate is shared with reward objectives, with its graph
    assert models.cache["consistency"].x0.requires_grad and models.cache["consistency"].x0.shape == (2, 3, 4, 8, 8)


def test_prepare_student_adds_the_guidance_embedding_and_marks_a_consistency_student():
    teacher = tiny_toy(DDPMSchedule())
    student = make_student(teacher)  # no guidance embedding asked for
    ConsistencyDistillation(guidance=6.0, sampling_steps=2).prepare_student(student)
    assert student.has_guidance_embedding and student.guidance_proj.weight.requires_grad
    assert student.vdistill_sampler == {"kind": "consistency", "guidance": 6.0, "original_steps": 50, "steps": 2}
    assert student.defaults.steps == 2 and student.defaults.cfg == 1.0


def test_bad_settings_are_user_errors():
    with pytest.raises(UserError, match="multiple of the grid spacing"):
        ConsistencyDistillation(num_ddim_timesteps=50, skip=10)
    with pytest.raises(UserError, match="w_min <= w_max"):
        ConsistencyDistillation(w_min=5, w_max=1)
