"""Adversarial alignment: the single-backward loss gives the alternating GAN update's gradients; the fake queue;
the noise-aware discriminator on frozen teacher features."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from objective_helpers import key_batch, tiny_toy
from torch import nn

from vdistill.backbones.base import cat_text
from vdistill.backbones.student import make_student
from vdistill.errors import UserError
from vdistill.objectives import AdversarialAlignment, FakeQueue, Models, TrajectoryGuidance
from vdistill.roles.discriminator import Discriminator

LAMBDA = 0.1


@pytest.fixture
def setup():
    teacher = tiny_toy()
    student = make_student(teacher)
    with torch.no_grad():  # a student that differs from the teacher
        for p in student.denoiser.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    batch = key_batch(teacher, batch=2, seed=1)
    disc = Discriminator(hidden=8)
    torch.manual_seed(3)
    disc.bind(teacher, batch["timesteps"][0, 1:].tolist())
    adv = AdversarialAlignment(weight=LAMBDA, queue_size=3)
    with torch.no_grad():  # fill the queues from an earlier "step"
        adv(key_batch(teacher, batch=2, seed=2), Models(student=student, teacher=teacher, discriminator=disc))
    return teacher, student, disc, adv, batch


def grads(params):
    return [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in params]


def textbook(teacher, student, disc, batch, queue: FakeQueue):
    """Alternating update at the same parameters: a D step on real vs. detached fakes + queue, then a G step on
    trajectory + lambda * non-saturating generator loss with D frozen. Returns (student grads, head grads)."""
    lat, times, text = batch["latents"], batch["timesteps"], batch["text"]
    s_params = [p for p in student.parameters() if p.requires_grad]
    h_params = list(disc.parameters())
    fakes, raws = [], []
    for k in range(lat.shape[1] - 1):
        raw = student(lat[:, k], times[:, k], text)
        raws.append(raw)
        fakes.append(student.schedule.step(raw, lat[:, k], times[:, k], times[:, k + 1]))
    # D step
    d_loss = []
    for j, fake in enumerate(fakes):
        q_lat, q_text = queue.get(j)
        t = times[:, j + 1]
        neg = disc(torch.cat([fake.detach(), q_lat]), t[:1].expand(len(fake) + len(q_lat)), cat_text(text, q_text), j)
        d_loss.append(F.softplus(-disc(lat[:, j + 1], t, text, j)).mean() + F.softplus(neg).mean())
    torch.stack(d_loss).mean().backward(retain_graph=True)
    h_grads = grads(h_params)
    assert all(p.grad is None for p in s_params)
    # G step with D frozen
    disc.requires_grad_(False)
    traj = torch.stack([((raw - (lat[:, k] - lat[:, k + 1])
                          / (times[:, k] - times[:, k + 1]).reshape(-1, 1, 1, 1, 1)) ** 2).mean()
                        for k, raw in enumerate(raws)]).mean()
    g = torch.stack([F.softplus(-disc(fake, times[:, j + 1], text, j)).mean() for j, fake in enumerate(fakes)])
    (traj + LAMBDA * g.mean()).backward()
    disc.requires_grad_(True)
    return grads(s_params), h_grads


def test_single_backward_equals_the_alternating_update(setup):
    teacher, student, disc, adv, batch = setup
    queued = adv.queue.get_extra_state()
    models = Models(student=student, teacher=teacher, discriminator=disc)
    traj = TrajectoryGuidance()
    out_t, out_a = traj(batch, models), adv(batch, models)
    assert {"adv_g", "adv_d", "real_acc", "fake_acc", "real_logit", "fake_logit"} <= set(out_a)
    (traj.total(out_t) + adv.total(out_a)).backward()
    s_params = [p for p in student.parameters() if p.requires_grad]
    h_params = list(disc.parameters())
    got_s, got_h = grads(s_params), grads(h_params)
    assert all(p.grad is None for p in teacher.parameters())  # the frozen teacher, features included
    assert all(g.abs().sum() > 0 for g in got_h) and any(g.abs().sum() > 0 for g in got_s)

    student.zero_grad(set_to_none=True)
    disc.zero_grad(set_to_none=True)
    queue = FakeQueue(3)
    queue.set_extra_state(queued)  # the queue as the combined loss saw it
    want_s, want_h = textbook(teacher, student, disc, batch, queue)
    for got, want in zip(got_h, want_h):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-7)
    for got, want in zip(got_s, want_s):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-7)
    assert all(p.grad is None for p in teacher.parameters())


def assert_each_term_reaches_only_its_own_parameters(out: dict, student, disc) -> None:
    """``adv_g`` reaches the student only, ``adv_d`` the heads only (gradients start cleared)."""
    out["adv_g"].backward(retain_graph=True)
    assert all(p.grad is None for p in disc.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    student.zero_grad(set_to_none=True)
    out["adv_d"].backward()
    assert all(p.grad is None for p in student.parameters())
    assert all(p.grad is not None for p in disc.parameters())


def test_each_term_reaches_only_its_own_parameters(setup):
    teacher, student, disc, adv, batch = setup
    out = adv(batch, Models(student=student, teacher=teacher, discriminator=disc))
    assert_each_term_reaches_only_its_own_parameters(out, student, disc)


def test_queue_is_fifo_newest_first_and_round_trips():
    q = FakeQueue(3)
    assert q.get(0) is None

    def batch(*values):
        return torch.tensor(values, dtype=torch.float32).reshape(-1, 1), {"ids": torch.tensor(values).reshape(-1, 1)}

    q.push(0, *batch(0, 1))
    q.push(0, *batch(2, 3))
    lat, text = q.get(0)
    assert lat.flatten().tolist() == [2, 3, 0] and text["ids"].flatten().tolist() == [2, 3, 0]
    q.push(0, *batch(4, 5, 6, 7))  # more than it holds: the newest first
    assert q.get(0)[0].flatten().tolist() == [4, 5, 6]
    q.push(1, *batch(9))
    assert q.get(1)[0].flatten().tolist() == [9]

    holder, fresh = nn.Module(), nn.Module()
    holder.queue, fresh.queue = q, FakeQueue(3)
    assert list(holder.buffers()) == []  # not a buffer: DDP must not broadcast rank 0's queue
    fresh.load_state_dict(holder.state_dict())
    for j in (0, 1):
        assert torch.equal(fresh.queue.get(j)[0], q.get(j)[0])
        assert torch.equal(fresh.queue.get(j)[1]["ids"], q.get(j)[1]["ids"])
    off = FakeQueue(0)
    off.push(0, *batch(1))
    assert off.get(0) is None


def test_discriminator_blocks_heads_and_hooks():
    teacher = tiny_toy()
    n = len(teacher.feature_blocks())
    times = [0.75, 0.5, 0.0]
    disc = Discriminator(hidden=8)
    disc.bind(teacher, times)
    assert disc.blocks == [n - 1, n - 1, n // 2] and len(disc.heads) == 3  # last for t > 0, middle when clean
    assert not any(p.requires_grad for p in teacher.parameters())
    x = torch.randn(2, 3, 4, 8, 8, requires_grad=True)
    text = teacher.encode_text(["a red circle moving left", ""])
    logits = disc(x, torch.full((2,), 0.5), text, 1)
    assert logits.shape == (2,)
    logits.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0  # through the frozen teacher
    assert all(not b._forward_hooks for b in teacher.feature_blocks())
    assert "teacher" not in dict(disc.named_children()) and not any("denoiser" in k for k in disc.state_dict())

    shared = Discriminator(feature_blocks=-1, shared_head=True, hidden=8)
    shared.bind(teacher, times)
    assert len(shared.heads) == 1 and shared.blocks == [n - 1] * 3
    with pytest.raises(UserError, match="one feature width"):
        Discriminator(feature_blocks=[0, 1, 2], shared_head=True).bind(teacher, times)
    with pytest.raises(UserError, match="outside the teacher's"):
        Discriminator(feature_blocks=[0, 1, 99]).bind(teacher, times)
    with pytest.raises(UserError, match="2 block indices for 3"):
        Discriminator(feature_blocks=[0, 1]).bind(teacher, times)


def test_the_heads_learn_to_tell_real_from_fake():
    """With the student frozen and its fakes clearly off, a few AdamW steps on the heads alone separate real key
    points from fakes at every key timestep (the heads and the teacher-feature hooks can learn at all)."""
    teacher = tiny_toy()
    student = make_student(teacher)
    with torch.no_grad():  # a student whose one-step outputs are far from the data
        for p in student.denoiser.parameters():
            p.mul_(-3.0)
    student.requires_grad_(False)
    batch = key_batch(teacher, batch=2, seed=1)
    with torch.no_grad():  # real key points: smooth, low-amplitude latents, unlike the bad student's fakes
        batch["latents"] = 0.3 * torch.tanh(batch["latents"].cumsum(dim=-1) / 4)
    torch.manual_seed(0)
    disc = Discriminator(hidden=8)
    disc.bind(teacher, batch["timesteps"][0, 1:].tolist())
    adv = AdversarialAlignment(weight=LAMBDA, queue_size=0)
    opt = torch.optim.AdamW(disc.parameters(), lr=3e-3)
    models = Models(student=student, teacher=teacher, discriminator=disc)
    first = adv(batch, models)
    for _ in range(60):
        out = adv(batch, Models(student=student, teacher=teacher, discriminator=disc))
        opt.zero_grad()
        out["adv_d"].backward()
        opt.step()
    assert out["adv_d"] < 0.5 * first["adv_d"], (first["adv_d"], out["adv_d"])
    assert out["real_acc"] == 1.0 and out["fake_acc"] == 1.0


def test_rollout_fakes_are_the_students_own_sample(setup):
    """``fakes="rollout"``: the fake at the clean key point is the student's m-step sample from fresh noise (what
    users get), not its one step from the teacher's previous key latent; each term still reaches only its own
    parameters."""
    from vdistill.sampling.sampler import sample_latents

    teacher, student, disc, _, batch = setup
    models = Models(student=student, teacher=teacher, discriminator=disc)
    lat, times = batch["latents"], batch["timesteps"]
    assert lat.shape[1] >= 3  # at least two student steps
    made = {}
    for fakes in ("teacher_keys", "rollout"):
        adv = AdversarialAlignment(weight=LAMBDA, queue_size=2, fakes=fakes)
        torch.manual_seed(5)
        out = adv(batch, models)
        made[fakes] = adv.queue.get(lat.shape[1] - 2)[0]  # this step's fakes at the clean key point
        if fakes == "rollout":
            assert_each_term_reaches_only_its_own_parameters(out, student, disc)
    torch.manual_seed(5)
    noise = torch.randn_like(lat[:, 0])  # the draw the rollout made
    with torch.no_grad():
        sample = sample_latents(student, noise, batch["text"], timesteps=times[0]).latents
    torch.testing.assert_close(made["rollout"], sample.float(), rtol=1e-5, atol=1e-6)
    assert (made["teacher_keys"] - sample).abs().max() > 1e-3
    with pytest.raises(UserError, match="fakes='student'.*teacher_keys"):
        AdversarialAlignment(fakes="student")
