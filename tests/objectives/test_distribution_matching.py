"""DMD2's pieces on their own: the generator gradient against a closed form on Gaussian data, the one-backward
routing of each loss term, backward simulation along the student's own chain, and the GAN head."""

from __future__ import annotations

import types

import pytest
import torch
from objective_helpers import PROMPTS, key_batch, tiny_toy
from torch import nn

from vdistill.backbones.student import make_student
from vdistill.diffusion.schedules import DDPMSchedule, FlowSchedule
from vdistill.errors import UserError
from vdistill.objectives.base import Models
from vdistill.objectives.distribution_matching import DistributionMatching, DMDBatch, rollout
from vdistill.roles.fake_score import FakeScoreConfig
from vdistill.sampling.sampler import sample_latents

SPREAD = 0.7  # the data's standard deviation s


def coefficients(schedule, t, ndim=5):
    a, s = schedule.coefficients(t)
    shape = (-1,) + (1,) * (ndim - 1)
    return a.reshape(shape), s.reshape(shape)


class GaussianScore(nn.Module):
    """The exact denoiser of data ``N(mean, SPREAD^2 I)``: its x0-prediction is the posterior mean
    ``mean + c (x_t - a mean)`` with ``c = a s^2 / (a^2 s^2 + sigma^2)``, returned in the schedule's raw
    parameterisation. ``text["mean"]`` ``[B, 1, 1, 1, 1]``: each sample's data mean (``uncond``: the empty prompt's)."""

    def __init__(self, schedule) -> None:
        super().__init__()
        self.schedule = schedule
        self.net = types.SimpleNamespace(schedule=schedule)  # the fake score network's interface
        self.defaults = types.SimpleNamespace(cfg=1.0)

    def forward(self, x, t, text, guidance=None):
        a, sigma = coefficients(self.schedule, t)
        mean = text["mean"]
        x0 = mean + a * SPREAD**2 / (a**2 * SPREAD**2 + sigma**2) * (x - a * mean)
        return self.schedule.from_x0_eps(x0, (x - a * x0) / sigma, t)

    def predict(self, x, t, text, uncond=None, cfg=1.0, guidance=None):
        cond = self(x, t, text)
        if uncond is None or cfg == 1.0:
            return cond
        return self(x, t, {"mean": uncond["mean"].expand_as(text["mean"])}) * (1 - cfg) + cfg * cond


@pytest.mark.parametrize("schedule", [FlowSchedule(shift=3.0), DDPMSchedule(prediction_type="epsilon"),
                                      DDPMSchedule(prediction_type="v_prediction")], ids=["flow", "eps", "v"])
def test_dmd_gradient_equals_the_closed_form_on_gaussians(schedule):
    """Real data N(mu_r, s^2) with mu_r = mu_u + w (mu_c - mu_u) (CFG at w of a teacher whose conditional and
    unconditional data are Gaussians), fake data N(mu_f, s^2): the two posterior means differ by
    ``(1 - c a)(mu_f - mu_r)`` whatever ``x_t``, so the student's gradient is that over DMD's normaliser, / numel."""
    torch.manual_seed(0)
    b, shape = 3, (3, 2, 4, 4)
    w, mu_c, mu_u, mu_f = 2.5, 1.0, 0.2, -0.5
    x0 = nn.Parameter(torch.randn(b, *shape) * SPREAD - 0.5)
    t = schedule.sampling_timesteps(10)[torch.tensor([2, 5, 8])]
    noise = torch.randn(b, *shape)
    obj = DistributionMatching(real_guidance=w)
    text = {"mean": torch.full((b, 1, 1, 1, 1), mu_c)}
    uncond = {"mean": torch.full((1, 1, 1, 1, 1), mu_u)}
    fake = GaussianScore(schedule)
    fake_text = {"mean": torch.full((b, 1, 1, 1, 1), mu_f)}
    fake.forward = lambda x, t, _text, guidance=None: GaussianScore.forward(fake, x, t, fake_text)
    out = obj.distribution_matching(x0, text, uncond, GaussianScore(schedule), fake, t=t, noise=noise)
    out["dmd"].backward()

    mu_r = mu_u + w * (mu_c - mu_u)
    a, sigma = coefficients(schedule, t)
    c = a * SPREAD**2 / (a**2 * SPREAD**2 + sigma**2)
    x_t = a * x0.detach() + sigma * noise
    real_x0 = mu_r + c * (x_t - a * mu_r)
    norm = (x0.detach() - real_x0).abs().flatten(1).mean(1).reshape(-1, 1, 1, 1, 1)
    expected = (1 - c * a) * (mu_f - mu_r) / norm / x0.numel()
    torch.testing.assert_close(x0.grad, expected.expand_as(x0), rtol=1e-4, atol=1e-9)
    # descending it moves the samples from the fake mean towards the real one
    assert (x0.grad.sum() > 0) == (mu_f > mu_r)


def dmd_setup(schedule=None, **kw):
    teacher = tiny_toy(schedule)
    student = make_student(teacher)
    student.set_key_timesteps(teacher.schedule.sampling_timesteps(6)[[0, 2, 4, 6]].tolist())
    obj = DistributionMatching(fake_score=FakeScoreConfig(), **kw)
    obj.bind_teacher(teacher)
    return obj, Models(student=student, teacher=teacher)


def grads_of(module: nn.Module) -> set[str]:
    return {n for n, p in module.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}


def test_each_term_reaches_only_its_own_parameters():
    """One backward of the whole objective: ``dmd`` and ``gan_g`` train the student alone, ``fake_score`` and
    ``gan_d`` the fake score network and head alone; a fake-only step reaches no student parameter."""
    obj, models = dmd_setup(gan_weight=0.5)
    batch = key_batch(models.teacher)
    for term in ("dmd", "gan_g", "fake_score", "gan_d"):
        torch.manual_seed(1)
        out = obj(batch, models)
        models.student.zero_grad(set_to_none=True)
        obj.zero_grad(set_to_none=True)
        out[term].backward()
        student, fake = grads_of(models.student), grads_of(obj.fake_score)
        if term in ("dmd", "gan_g"):
            assert student and not fake, term
        else:
            assert fake and not student, term
            assert any(n.startswith("head.") for n in fake) == (term == "gan_d")
    models.student.zero_grad(set_to_none=True)
    obj.zero_grad(set_to_none=True)
    out = obj.side_losses(batch, models)
    assert set(out) >= {"fake_score", "gan_d"} and "dmd" not in out and "gan_g" not in out
    obj.total(out).backward()
    assert all(p.grad is None for p in models.student.parameters())
    assert grads_of(obj.fake_score)
    assert not any(p.requires_grad for p in models.teacher.parameters())


def test_the_student_sees_its_own_chain_from_noise():
    """Backward simulation: the input of step i is the student's own DDIM / Euler chain from the noise (the sampler's
    latents), without gradient before the trained step; the batch's key points are never its input."""
    obj, models = dmd_setup(DDPMSchedule(prediction_type="v_prediction"))
    seen = []
    forward = models.student.forward

    def spy(x, t, text, guidance=None):
        seen.append((x.detach().clone(), float(t[0]), torch.is_grad_enabled()))
        return forward(x, t, text, guidance)

    models.student.forward = spy
    times = models.student.key_timesteps
    text = models.teacher.encode_text(PROMPTS[:2])
    noise = torch.randn(2, 3, 4, 8, 8)
    x0 = rollout(noise, times, 2, text, models)
    assert x0.requires_grad and [s[2] for s in seen] == [False, False, True]
    assert [s[1] for s in seen] == list(times[:3])
    del models.student.forward
    ref = sample_latents(models.student, noise, text, timesteps=torch.tensor(times[:3]), capture=(0, 1, 2))
    for j, (x, _, _) in enumerate(seen):
        torch.testing.assert_close(x, ref.trajectory[j].float(), rtol=1e-5, atol=1e-6)
    # the whole objective: NaN key points in the batch cannot reach a student that only reads its own chain
    batch = key_batch(models.teacher)
    batch["latents"] = torch.full_like(batch["latents"], float("nan"))
    out = obj(batch, models)
    assert torch.isfinite(out["dmd"]) and torch.isfinite(out["fake_score"])


def test_the_gan_head_learns_clearly_separable_fakes():
    """DMD2's classifier on the fake score's features: real latents near -1, fakes near +2, low noise levels; a few
    AdamW steps on ``gan_d`` (network and head) take it from chance to every sample right."""
    torch.manual_seed(0)
    obj, models = dmd_setup(gan_weight=1.0, gan_hidden=8, min_t=0.02, max_t=0.3)
    text = models.teacher.encode_text(PROMPTS[:2])
    real = torch.randn(2, 3, 4, 8, 8) * 0.1 - 1.0
    fakes = torch.randn(2, 3, 4, 8, 8) * 0.1 + 2.0
    data = DMDBatch(text, models.teacher.encode_text([""]), tuple(real.shape), real)
    opt = torch.optim.AdamW(obj.fake_score.trainable(), lr=3e-3)
    first = obj.gan_d(fakes, data)
    for _ in range(40):
        out = obj.gan_d(fakes, data)
        opt.zero_grad()
        out["gan_d"].backward()
        opt.step()
    with torch.no_grad():
        last = obj.gan_d(fakes, data)
    assert last["gan_d"] < 0.2 * first["gan_d"]
    assert last["real_acc"] == 1 and last["fake_acc"] == 1


def test_misconfigurations_are_user_errors():
    with pytest.raises(UserError, match="min_t < max_t"):
        DistributionMatching(min_t=0.5, max_t=0.2)
    with pytest.raises(UserError, match="fake_updates"):
        DistributionMatching(fake_updates=0)
    with pytest.raises(UserError, match="'full' or 'lora'"):
        DistributionMatching(fake_score=FakeScoreConfig(mode="half"))
    obj = DistributionMatching(gan_weight=1.0, gan_block=7)
    with pytest.raises(UserError, match="gan_block 7"):
        obj.bind_teacher(tiny_toy())
    with pytest.raises(UserError, match="cannot run under FSDPStrategy"):
        DistributionMatching(gan_weight=0.1).check_strategy("FSDPStrategy", True)
    DistributionMatching(gan_weight=0.1).check_strategy("DDPStrategy", False)
    obj, models = dmd_setup()
    models.student.key_timesteps = None
    with pytest.raises(UserError, match="key timesteps"):
        obj(key_batch(models.teacher), models)
