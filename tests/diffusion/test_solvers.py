"""The deterministic solver step (:meth:`NoiseSchedule.step`): DDIM (eta 0) and Euler against diffusers'
DDIMScheduler and FlowMatchEulerDiscreteScheduler."""

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler

from vdistill.diffusion import DDPMSchedule, FlowSchedule

SHAPE = (2, 4, 3, 6, 6)  # [B, C, T, H, W] latents


def _randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _ddim(schedule: DDPMSchedule) -> DDIMScheduler:
    return DDIMScheduler(beta_schedule=schedule.beta_schedule, beta_start=schedule.beta_start,
                         beta_end=schedule.beta_end, prediction_type=schedule.prediction_type,
                         timestep_spacing=schedule.timestep_spacing, set_alpha_to_one=True, clip_sample=False)


def fake_model(x: torch.Tensor, t: float) -> torch.Tensor:
    """A fixed smooth function of ``(x, t)`` standing in for a network (``t`` in the network's units)."""
    phase = t / 1000.0
    return 0.6 * torch.tanh(x) * np.cos(phase) + 0.3 * np.sin(3 * phase) + 0.1 * x.roll(1, dims=-1)


# -- DDIM -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("prediction_type", ("epsilon", "v_prediction", "sample"))
@pytest.mark.parametrize("spacing", ("trailing", "leading"))
@pytest.mark.parametrize("beta_schedule", ("linear", "scaled_linear"))
def test_ddim_single_steps_match_diffusers(prediction_type, spacing, beta_schedule):
    schedule = DDPMSchedule(beta_schedule=beta_schedule, prediction_type=prediction_type, timestep_spacing=spacing)
    scheduler = _ddim(schedule)
    n = 10
    scheduler.set_timesteps(n)
    grid = schedule.sampling_timesteps(n)
    assert torch.equal(grid[:-1].long(), scheduler.timesteps)
    for i, (t, t_next) in enumerate(zip(grid[:-1], grid[1:])):
        x_t, raw = _randn(*SHAPE, seed=i), _randn(*SHAPE, seed=100 + i)
        ref = scheduler.step(raw, int(t), x_t, eta=0.0).prev_sample
        ours = schedule.step(raw, x_t, t.repeat(SHAPE[0]), t_next.repeat(SHAPE[0]))
        torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("prediction_type", ("epsilon", "v_prediction", "sample"))
@pytest.mark.parametrize("spacing", ("trailing", "leading"))
@pytest.mark.parametrize("n", (1, 4, 25))
def test_ddim_sampling_loop_matches_diffusers(prediction_type, spacing, n):
    schedule = DDPMSchedule(prediction_type=prediction_type, timestep_spacing=spacing)
    scheduler = _ddim(schedule)
    scheduler.set_timesteps(n)
    x_ref = x_ours = _randn(*SHAPE, seed=7)
    for t in scheduler.timesteps:
        x_ref = scheduler.step(fake_model(x_ref, float(t)), t, x_ref, eta=0.0).prev_sample
    grid = schedule.sampling_timesteps(n)
    for t, t_next in zip(grid[:-1], grid[1:]):
        t_b, t_next_b = t.repeat(SHAPE[0]), t_next.repeat(SHAPE[0])
        x_ours = schedule.step(fake_model(x_ours, float(schedule.model_timestep(t))), x_ours, t_b, t_next_b)
    torch.testing.assert_close(x_ours, x_ref, rtol=2e-4, atol=2e-4)


def test_ddim_step_uses_per_sample_timesteps():
    schedule = DDPMSchedule(prediction_type="v_prediction")
    scheduler = _ddim(schedule)
    scheduler.set_timesteps(4)
    x_t, raw = _randn(*SHAPE, seed=1), _randn(*SHAPE, seed=2)
    t, t_next = torch.tensor([999.0, 499.0]), torch.tensor([749.0, 249.0])
    ours = schedule.step(raw, x_t, t, t_next)
    for b in range(SHAPE[0]):
        ref = scheduler.step(raw[b : b + 1], int(t[b]), x_t[b : b + 1], eta=0.0).prev_sample
        torch.testing.assert_close(ours[b : b + 1], ref, rtol=1e-4, atol=1e-4)


def test_ddim_step_to_clean_returns_predicted_x0():
    schedule = DDPMSchedule(prediction_type="epsilon")
    x_t, raw, t = _randn(*SHAPE, seed=3), _randn(*SHAPE, seed=4), torch.tensor([19.0, 19.0])
    torch.testing.assert_close(schedule.step(raw, x_t, t, torch.tensor([-1.0, -1.0])),
                               schedule.to_x0(raw, x_t, t))


# -- Euler (rectified flow) -------------------------------------------------------------------------------
def _flow_scheduler(shift: float, n: int) -> FlowMatchEulerDiscreteScheduler:
    scheduler = FlowMatchEulerDiscreteScheduler(shift=shift)
    scheduler.set_timesteps(sigmas=np.linspace(1.0, 0.0, n + 1)[:-1].tolist())
    return scheduler


@pytest.mark.parametrize("shift", (1.0, 3.0, 7.0))
def test_euler_single_steps_match_diffusers(shift):
    schedule, n = FlowSchedule(shift=shift), 8
    scheduler = _flow_scheduler(shift, n)
    grid = schedule.sampling_timesteps(n)
    for i, (t, t_next) in enumerate(zip(grid[:-1], grid[1:])):
        x_t, v = _randn(*SHAPE, seed=i), _randn(*SHAPE, seed=50 + i)
        ref = scheduler.step(v, scheduler.timesteps[i], x_t).prev_sample
        t_b, t_next_b = t.repeat(SHAPE[0]), t_next.repeat(SHAPE[0])
        ours = schedule.step(v, x_t, t_b, t_next_b)
        torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
        # the re-noise form of NoiseSchedule.step is the same Euler step on the linear path
        torch.testing.assert_close(schedule.step(v, x_t, t_b, t_next_b), ours, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shift", (1.0, 3.0, 7.0))
@pytest.mark.parametrize("n", (1, 5, 50))
def test_euler_sampling_loop_matches_diffusers(shift, n):
    schedule = FlowSchedule(shift=shift)
    scheduler = _flow_scheduler(shift, n)
    grid = schedule.sampling_timesteps(n)
    torch.testing.assert_close(schedule.model_timestep(grid[:-1]), scheduler.timesteps, rtol=1e-6, atol=1e-4)
    x_ref = x_ours = x_step = _randn(*SHAPE, seed=9)
    for t in scheduler.timesteps:
        x_ref = scheduler.step(fake_model(x_ref, float(t)), t, x_ref).prev_sample
    for t, t_next in zip(grid[:-1], grid[1:]):
        t_b, t_next_b = t.repeat(SHAPE[0]), t_next.repeat(SHAPE[0])
        x_ours = schedule.step(fake_model(x_ours, float(schedule.model_timestep(t))), x_ours, t_b, t_next_b)
        x_step = schedule.step(fake_model(x_step, float(schedule.model_timestep(t))), x_step, t_b, t_next_b)
    torch.testing.assert_close(x_ours, x_ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(x_step, x_ref, rtol=1e-4, atol=1e-4)


def test_euler_step_keeps_dtype_and_per_sample_times():
    schedule = FlowSchedule(shift=3.0)
    x_t, v = _randn(*SHAPE, seed=1).double(), _randn(*SHAPE, seed=2).double()
    t, t_next = torch.tensor([0.9, 0.5]), torch.tensor([0.7, 0.0])
    out = schedule.step(v, x_t, t, t_next)
    assert out.dtype == torch.float64
    for b in range(SHAPE[0]):
        torch.testing.assert_close(out[b], x_t[b] + (t_next[b] - t[b]).double() * v[b])


@pytest.mark.parametrize("prediction_type", ("epsilon", "v_prediction"))
@pytest.mark.parametrize("beta_schedule", ("squaredcos_cap_v2", "linear"))
def test_clipped_cosine_sampling_loop_matches_diffusers(prediction_type, beta_schedule):
    """The toy DDPM teacher's sampler: cosine betas, x0 clipped to [-1, 1] each step, model eps kept."""
    schedule = DDPMSchedule(beta_schedule=beta_schedule, prediction_type=prediction_type, clip_sample=1.0)
    scheduler = DDIMScheduler(beta_schedule=beta_schedule, prediction_type=prediction_type,
                              timestep_spacing="trailing", set_alpha_to_one=True, clip_sample=True,
                              clip_sample_range=1.0)
    torch.testing.assert_close(schedule.alphas_cumprod.float(), scheduler.alphas_cumprod, rtol=1e-5, atol=1e-7)
    scheduler.set_timesteps(10)
    x_ref = x_ours = 3 * _randn(*SHAPE, seed=11)  # large values: the clamp is active
    for t in scheduler.timesteps:
        x_ref = scheduler.step(fake_model(x_ref, float(t)), t, x_ref, eta=0.0).prev_sample
    grid = schedule.sampling_timesteps(10)
    for t, t_next in zip(grid[:-1], grid[1:]):
        x_ours = schedule.step(fake_model(x_ours, float(t)), x_ours, t.repeat(SHAPE[0]), t_next.repeat(SHAPE[0]))
    torch.testing.assert_close(x_ours, x_ref, rtol=2e-4, atol=2e-4)
    assert x_ours.abs().max() <= 1.0 + 1e-5  # the last step returns the clipped x0
