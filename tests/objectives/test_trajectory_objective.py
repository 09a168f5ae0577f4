"""Trajectory-based few-step guidance (AccVideo Eq. 6): targets in every parameterisation, loss gradients."""

from __future__ import annotations

import pytest
import torch
from objective_helpers import key_batch, tiny_toy

from vdistill.backbones.student import make_student
from vdistill.diffusion.schedules import DDPMSchedule, FlowSchedule
from vdistill.objectives import Models, TrajectoryGuidance, jump_coefficients, jump_target

SCHEDULES = {
    "flow": FlowSchedule(shift=3.0),
    "ddpm-eps": DDPMSchedule(beta_schedule="linear", prediction_type="epsilon"),
    "ddpm-v": DDPMSchedule(prediction_type="v_prediction"),
    "ddpm-sample": DDPMSchedule(prediction_type="sample", timestep_spacing="leading"),
}


def pairs(schedule, indices=(0, 3, 7, 10), n: int = 3, seed: int = 0):
    """Random latents at consecutive key times of a 10-step grid: x, x_next [P * n, 2, 3, 3], t, t_next [P * n]."""
    grid = schedule.sampling_timesteps(10)[list(indices)]
    t = grid[:-1].repeat_interleave(n)
    t_next = grid[1:].repeat_interleave(n)
    g = torch.Generator().manual_seed(seed)
    return torch.randn(len(t), 2, 3, 3, generator=g), torch.randn(len(t), 2, 3, 3, generator=g), t, t_next


def test_flow_target_is_the_finite_difference_velocity():
    schedule = SCHEDULES["flow"]
    x, x_next, t, t_next = pairs(schedule)
    a, b = jump_coefficients(schedule, t, t_next)
    torch.testing.assert_close(a, torch.ones_like(a))
    torch.testing.assert_close(b, t_next - t)
    fd = (x - x_next) / (t - t_next).reshape(-1, 1, 1, 1)
    torch.testing.assert_close(jump_target(schedule, x, x_next, t, t_next), fd)


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_one_step_with_the_target_lands_on_the_next_key_point(name):
    schedule = SCHEDULES[name]
    x, x_next, t, t_next = pairs(schedule)
    assert t_next[-1] <= 0  # the last pair ends at the clean terminal time
    target = jump_target(schedule, x, x_next, t, t_next)
    torch.testing.assert_close(schedule.step(target, x, t, t_next), x_next, atol=2e-5, rtol=1e-5)


def closed_form_target(schedule, x, x_next, t, t_next):
    """Independent targets: flow finite differences; DDPM epsilon from the DDIM update written out."""
    if schedule.kind == "flow":
        return (x - x_next) / (t - t_next).reshape(-1, 1, 1, 1, 1)
    table = schedule.alphas_cumprod

    def ab(s):
        return torch.where(s < 0, torch.ones_like(s, dtype=torch.float64), table[s.long().clamp(min=0)])

    a, a2 = ab(t).sqrt(), ab(t_next).sqrt()
    s, s2 = (1 - ab(t)).sqrt(), (1 - ab(t_next)).sqrt()
    # x_next = a2 * (x - s * eps) / a + s2 * eps  =>  eps = (x_next - a2 / a * x) / (s2 - a2 * s / a)
    view = (-1, 1, 1, 1, 1)
    return ((x_next - (a2 / a).reshape(view).float() * x) / (s2 - a2 * s / a).reshape(view).float())


@pytest.mark.parametrize("name", ["flow", "ddpm-eps"])
def test_loss_gradient_matches_a_manual_computation(name):
    teacher = tiny_toy(SCHEDULES[name])
    student = make_student(teacher)
    batch = key_batch(teacher, batch=2)
    out = TrajectoryGuidance()(batch, Models(student=student, teacher=teacher))
    assert set(out) == {"trajectory", "k0", "k1", "k2"}
    out["trajectory"].backward()
    params = [p for p in student.parameters() if p.requires_grad]
    got = [p.grad.clone() for p in params]
    student.zero_grad()

    lat, times = batch["latents"], batch["timesteps"]
    losses = []
    for k in range(lat.shape[1] - 1):
        raw = student(lat[:, k], times[:, k], batch["text"])
        target = closed_form_target(teacher.schedule, lat[:, k], lat[:, k + 1], times[:, k], times[:, k + 1])
        losses.append(((raw - target) ** 2).mean())
    manual = torch.stack(losses).mean()  # every pair has as many elements: the mean of the means is the mean
    torch.testing.assert_close(out["trajectory"], manual, rtol=1e-5, atol=1e-6)
    manual.backward()
    for g, p in zip(got, params):
        torch.testing.assert_close(g, p.grad, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(torch.stack([out[f"k{k}"] for k in range(3)]), torch.stack(losses).detach(),
                               rtol=1e-5, atol=1e-6)
    assert all(p.grad is None for p in teacher.parameters())


def test_predictions_are_shared_between_objectives():
    teacher = tiny_toy()
    student = make_student(teacher)
    calls = []
    student.register_forward_hook(lambda *_: calls.append(1))
    models = Models(student=student, teacher=teacher)
    batch = key_batch(teacher)
    TrajectoryGuidance()(batch, models)
    TrajectoryGuidance()(batch, models)
    assert len(calls) == 1  # one batched student forward per step, whatever the number of objectives
