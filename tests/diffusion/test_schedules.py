"""Schedules against diffusers: alphas_cumprod, add_noise, sampling grids, prediction conversions, errors."""

import inspect
import json
import re

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, FlowMatchEulerDiscreteScheduler, LCMScheduler

from vdistill.diffusion import DDPMSchedule, FlowSchedule, timesteps_at
from vdistill.errors import UserError

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
DDPM_PREDICTIONS = ("epsilon", "v_prediction", "sample")


def _ddim(schedule: DDPMSchedule) -> DDIMScheduler:
    return DDIMScheduler(
        num_train_timesteps=schedule.num_train_timesteps,
        beta_schedule=schedule.beta_schedule,
        beta_start=schedule.beta_start,
        beta_end=schedule.beta_end,
        prediction_type=schedule.prediction_type,
        timestep_spacing=schedule.timestep_spacing,
        set_alpha_to_one=True,
        clip_sample=False,
    )


def _randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# -- DDPM forward process ------------------------------------------------------------------------------------
@pytest.mark.parametrize("beta_schedule", BETA_SCHEDULES)
def test_alphas_cumprod_match_diffusers(beta_schedule):
    ours = DDPMSchedule(beta_schedule=beta_schedule)
    ref = _ddim(ours).alphas_cumprod.double()  # diffusers builds it in float32
    # (the cosine schedule's last values are ~1e-6, where float32's rounding is relatively large)
    torch.testing.assert_close(ours.alphas_cumprod, ref, rtol=2e-6, atol=1e-6 if beta_schedule.startswith("squared")
                               else 0)
    assert ours.alphas_cumprod.dtype == torch.float64


def test_default_betas_are_the_reference_schedules():
    """``linear`` is DDPM's pixel-space schedule (diffusers' DDPMScheduler default), the default ``scaled_linear``
    Stable Diffusion's latent one (diffusers' LCMScheduler default, the schedule of SD-based video teachers);
    explicit endpoints are used as given."""
    torch.testing.assert_close(DDPMSchedule("linear").alphas_cumprod, DDPMScheduler().alphas_cumprod.double(),
                               rtol=2e-6, atol=0)
    torch.testing.assert_close(DDPMSchedule().alphas_cumprod, LCMScheduler().alphas_cumprod.double(),
                               rtol=2e-6, atol=0)
    torch.testing.assert_close(DDPMSchedule("linear", beta_start=2e-4, beta_end=0.03).alphas_cumprod,
                               DDPMScheduler(beta_start=2e-4, beta_end=0.03).alphas_cumprod.double(), rtol=2e-6, atol=0)


@pytest.mark.parametrize("beta_schedule", BETA_SCHEDULES)
def test_add_noise_matches_diffusers(beta_schedule):
    ours = DDPMSchedule(beta_schedule=beta_schedule)
    x0, noise = _randn(6, 4, 3, 5, 5, seed=1), _randn(6, 4, 3, 5, 5, seed=2)
    t = torch.tensor([0, 1, 250, 500, 998, 999])
    ref = _ddim(ours).add_noise(x0, noise, t)
    torch.testing.assert_close(ours.add_noise(x0, noise, t.float()), ref, rtol=1e-5, atol=1e-5)


def test_terminal_timestep_is_clean():
    ours = DDPMSchedule()
    assert ours.alpha_bar(torch.tensor([-1.0])).item() == 1.0
    alpha, sigma = ours.coefficients(torch.tensor([-1.0]))
    assert (alpha.item(), sigma.item()) == (1.0, 0.0)
    x0 = _randn(2, 3)
    assert torch.equal(ours.add_noise(x0, _randn(2, 3, seed=1), torch.tensor([-1.0, -1.0])), x0)


# -- DDPM sampling grids -----------------------------------------------------------------------------------
@pytest.mark.parametrize("spacing", ("trailing", "leading"))
def test_ddpm_sampling_grid_matches_diffusers_for_every_step_count(spacing):
    ours = DDPMSchedule(timestep_spacing=spacing)
    scheduler = _ddim(ours)
    for n in range(1, 1001):
        grid = ours.sampling_timesteps(n)
        scheduler.set_timesteps(n)
        assert len(grid) == n + 1 and grid[-1].item() == -1.0
        # diffusers' own float arange yields n + 1 trailing entries for some n (e.g. 61); the first n agree
        assert torch.equal(grid[:-1].long(), scheduler.timesteps[:n]), n
        assert torch.all(grid[1:] < grid[:-1])


@pytest.mark.parametrize("n", (1, 4, 8, 25, 50))
def test_trailing_grid_is_t2v_turbo_grid(n):
    expected = (torch.arange(n, 0, -1) * (1000 // n) - 1).tolist() + [-1]
    assert DDPMSchedule(timestep_spacing="trailing").sampling_timesteps(n).long().tolist() == expected


@pytest.mark.parametrize("spacing", ("trailing", "leading"))
@pytest.mark.parametrize("n", (1, 4, 10, 50))
def test_ddim_prev_timestep_is_next_grid_entry(spacing, n):
    """diffusers' DDIM steps to ``t - T // N`` (clean when negative): our next grid entry when N divides T."""
    grid = DDPMSchedule(timestep_spacing=spacing).sampling_timesteps(n).long()
    prev = grid[:-1] - 1000 // n
    assert torch.equal(prev[:-1], grid[1:-1])
    assert prev[-1] < 0 and grid[-1] == -1


# -- prediction conversions --------------------------------------------------------------------------------
def _closed_form(schedule, x0, eps, t):
    alpha, sigma = (c.double().reshape(-1, 1, 1) for c in schedule.coefficients(t))
    return {
        "epsilon": eps,
        "sample": x0,
        "v_prediction": alpha * eps - sigma * x0,
        "flow": eps - x0,
    }, alpha * x0 + sigma * eps


@pytest.mark.parametrize("prediction_type", DDPM_PREDICTIONS)
def test_ddpm_conversions_round_trip(prediction_type):
    schedule = DDPMSchedule(prediction_type=prediction_type)
    t = torch.tensor([0.0, 10.0, 321.0, 777.0, 999.0])
    x0, eps = _randn(5, 3, 4, seed=3).double(), _randn(5, 3, 4, seed=4).double()
    targets, x_t = _closed_form(schedule, x0, eps, t)
    raw = schedule.from_x0_eps(x0, eps, t)
    torch.testing.assert_close(raw, targets[prediction_type], rtol=1e-6, atol=1e-6)
    x0_back, eps_back = schedule.to_x0_eps(raw, x_t, t)
    torch.testing.assert_close(x0_back, x0, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(eps_back, eps, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(schedule.to_x0(raw, x_t, t), x0, rtol=1e-5, atol=1e-5)


def test_flow_conversions_round_trip():
    schedule = FlowSchedule(shift=3.0)
    t = torch.tensor([0.0, 0.1, 0.5, 0.9, 1.0])
    x0, eps = _randn(5, 3, 4, seed=5).double(), _randn(5, 3, 4, seed=6).double()
    targets, x_t = _closed_form(schedule, x0, eps, t)
    torch.testing.assert_close(x_t, (1 - t.double()).reshape(-1, 1, 1) * x0 + t.double().reshape(-1, 1, 1) * eps)
    raw = schedule.from_x0_eps(x0, eps, t)
    torch.testing.assert_close(raw, eps - x0)
    x0_back, eps_back = schedule.to_x0_eps(raw, x_t, t)
    torch.testing.assert_close(x0_back, x0, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(eps_back, eps, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("beta_schedule", BETA_SCHEDULES)
def test_v_prediction_matches_diffusers_velocity(beta_schedule):
    schedule = DDPMSchedule(beta_schedule=beta_schedule, prediction_type="v_prediction")
    reference = DDPMScheduler(beta_schedule=beta_schedule, beta_start=schedule.beta_start,
                              beta_end=schedule.beta_end, prediction_type="v_prediction")
    x0, eps = _randn(4, 2, 3, 6, 6, seed=7), _randn(4, 2, 3, 6, 6, seed=8)
    t = torch.tensor([0, 333, 666, 999])
    v = reference.get_velocity(x0, eps, t)
    torch.testing.assert_close(schedule.from_x0_eps(x0, eps, t.float()), v, rtol=1e-5, atol=1e-5)
    x_t = reference.add_noise(x0, eps, t)
    x0_hat, eps_hat = schedule.to_x0_eps(v, x_t, t.float())
    torch.testing.assert_close(x0_hat, x0, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(eps_hat, eps, rtol=1e-4, atol=1e-4)


# -- flow schedule and its shifted grid ---------------------------------------------------------------------
@pytest.mark.parametrize("shift", (1.0, 3.0, 5.0, 7.0))
@pytest.mark.parametrize("n", (1, 4, 50))
def test_flow_grid_matches_diffusers(shift, n):
    ours = FlowSchedule(shift=shift)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=shift)
    # set_timesteps(sigmas=...) shifts the given sigmas itself when use_dynamic_shifting is False
    scheduler.set_timesteps(sigmas=np.linspace(1.0, 0.0, n + 1)[:-1].tolist())
    grid = ours.sampling_timesteps(n)
    assert grid.dtype == torch.float32 and len(grid) == n + 1
    torch.testing.assert_close(grid, scheduler.sigmas, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(ours.model_timestep(grid[:-1]), scheduler.timesteps, rtol=1e-6, atol=1e-4)
    assert grid[0].item() == pytest.approx(1.0) and grid[-1].item() == 0.0


def test_flow_grid_with_unit_shift_is_linear():
    torch.testing.assert_close(FlowSchedule().sampling_timesteps(10), torch.linspace(1.0, 0.0, 11))


def test_accvideo_key_timesteps():
    """AccVideo's 5 key steps are every 10th entry of the 50-step shift-7 grid, i.e. the native 5-step grid (as
    diffusers' flow scheduler shifts it)."""
    schedule = FlowSchedule(shift=7.0)
    keys = timesteps_at(schedule.sampling_timesteps(50), [0, 10, 20, 30, 40, 50])
    scheduler = FlowMatchEulerDiscreteScheduler(shift=7.0)
    scheduler.set_timesteps(sigmas=np.linspace(1.0, 0.0, 6)[:-1].tolist())
    torch.testing.assert_close(keys, scheduler.sigmas, rtol=0, atol=1e-6)
    torch.testing.assert_close(keys, schedule.sampling_timesteps(5), rtol=0, atol=1e-6)


def test_flow_training_timesteps_are_logit_normal():
    schedule = FlowSchedule(logit_normal_mean=0.5, logit_normal_std=0.8)
    t = schedule.sample_training_timesteps(20000, generator=torch.Generator().manual_seed(0))
    logits = torch.logit(t.double())
    assert t.shape == (20000,) and 0 < t.min() and t.max() < 1
    assert logits.mean().item() == pytest.approx(0.5, abs=0.03)
    assert logits.std().item() == pytest.approx(0.8, abs=0.03)


def test_ddpm_training_timesteps_are_integers_in_range():
    t = DDPMSchedule().sample_training_timesteps(5000, generator=torch.Generator().manual_seed(0))
    assert t.dtype == torch.float32 and t.min() >= 0 and t.max() <= 999 and torch.equal(t, t.round())


# -- errors -------------------------------------------------------------------------------------------------
def test_timesteps_at_rejects_bad_indices():
    grid = DDPMSchedule().sampling_timesteps(4)
    assert torch.equal(timesteps_at(grid, [0, 2, 4]), grid[[0, 2, 4]])
    assert timesteps_at(grid, []).numel() == 0
    for bad in ([5], [-1], [0, 7]):
        with pytest.raises(UserError, match=r"valid 0\.\.4"):
            timesteps_at(grid, bad)


@pytest.mark.parametrize("arg, bad", [("prediction_type", "flow"), ("prediction_type", "x0"),
                                      ("beta_schedule", "cosine"), ("timestep_spacing", "linspace")])
def test_bad_choices_name_the_valid_ones(arg, bad):
    """One line naming the bad value, then choices that are each accepted."""
    with pytest.raises(UserError) as err:
        DDPMSchedule(**{arg: bad})
    message = str(err.value)
    named = re.findall(r"'([^']+)'", message)
    assert "\n" not in message and named[0] == bad and len(named) > 2, message
    for choice in named[1:]:
        DDPMSchedule(**{arg: choice})


def test_other_user_errors():
    with pytest.raises(UserError, match="shift"):
        FlowSchedule(shift=0.0)
    with pytest.raises(UserError, match="num_steps"):
        DDPMSchedule().sampling_timesteps(0)
    with pytest.raises(UserError, match="num_steps"):
        DDPMSchedule().sampling_timesteps(1001)
    with pytest.raises(UserError, match="num_steps"):
        FlowSchedule().sampling_timesteps(0)


def _rebuilt(schedule):
    """The schedule built back from its description, as a data manifest stores it (JSON)."""
    described = json.loads(json.dumps(schedule.describe()))
    accepted = inspect.signature(type(schedule)).parameters
    return type(schedule)(**{k: v for k, v in described.items() if k in accepted})


def _behaviour(schedule) -> list[torch.Tensor]:
    """What trajectories depend on: noising, the training target, the 7-step grid and one solver step."""
    t = torch.tensor([0.0, 0.2, 0.7, 0.95]) if schedule.kind == "flow" else torch.tensor([0.0, 99.0, 321.0, 499.0])
    x0, eps = _randn(4, 3, 5, seed=9), _randn(4, 3, 5, seed=10)
    x_t, raw, grid = schedule.add_noise(x0, eps, t), schedule.from_x0_eps(x0, eps, t), schedule.sampling_timesteps(7)
    return [x_t, raw, grid, schedule.step(3 * raw, x_t, t, grid[3].expand(4))]  # 3 * raw: an x0 outside [-1, 1]


@pytest.mark.parametrize("schedule", [
    DDPMSchedule(), DDPMSchedule("linear", beta_start=2e-4), DDPMSchedule(beta_end=0.02),
    DDPMSchedule(prediction_type="v_prediction"), DDPMSchedule(timestep_spacing="leading"),
    DDPMSchedule(clip_sample=1.0), DDPMSchedule("squaredcos_cap_v2", num_train_timesteps=500),
    FlowSchedule(), FlowSchedule(shift=5),
], ids=["ddpm", "linear", "beta_end", "v", "leading", "clip", "cosine_500", "flow", "shift"])
def test_describe_records_what_makes_data_compatible(schedule):
    """Trajectories are refused when the schedule's ``describe()`` differs from the teacher's: rebuilt from its
    description a schedule behaves as the original, and a description equals the default's only when the behaviour
    does."""
    assert all(torch.equal(a, b) for a, b in zip(_behaviour(_rebuilt(schedule)), _behaviour(schedule)))
    default = type(schedule)()
    same = all(torch.equal(a, b) for a, b in zip(_behaviour(default), _behaviour(schedule)))
    assert (default.describe() == schedule.describe()) == same


def test_training_only_settings_do_not_make_data_incompatible():
    assert FlowSchedule(logit_normal_mean=0.5, logit_normal_std=0.8).describe() == FlowSchedule().describe()
