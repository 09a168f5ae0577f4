"""Mixed reward feedback: the loss by hand, gradients to the student only, every x0 source, logging, and one fit
step of a distillation with tiny random toy critics."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from objective_helpers import PROMPTS, key_batch, tiny_toy

from vdistill.backbones.io import save_backbone
from vdistill.critics import load_critic
from vdistill.critics import toy as toy_critics
from vdistill.critics.build import build_critics
from vdistill.data.trajectories import TrajectoryData
from vdistill.errors import UserError
from vdistill.modules.distill import Distillation
from vdistill.objectives import TrajectoryGuidance
from vdistill.objectives.base import Models
from vdistill.objectives.consistency import ConsistencyPrediction
from vdistill.objectives.reward import STUDENT_X0, RewardFeedback, key_point_x0, student_x0
from vdistill.objectives.trajectory import key_point_predictions
from vdistill.synth import synthesize

BETAS = {"img": 1.0, "vid": 2.0}
pytestmark = pytest.mark.filterwarnings("ignore:critic 'img' has no checkpoint")


def tiny_critics() -> dict:
    torch.manual_seed(0)
    # T = 4 frames everywhere: both critics use every frame, in order, so scores are deterministic
    return {"img": load_critic("toy-image", size="tiny", num_frames=4), "vid": load_critic("toy-video", size="tiny")}


def student_models(critics=None) -> Models:
    student = tiny_toy(seed=1)
    student.denoiser.requires_grad_(True)
    return Models(student=student, critics=critics if critics is not None else tiny_critics())


def by_hand(models: Models, x0: torch.Tensor, prompts: list[str]) -> dict[str, torch.Tensor]:
    pixels = models.student.decode_latents(x0)
    return {name: models.critics[name](pixels, prompts) for name in BETAS}


def test_loss_is_minus_weighted_mean_scores_and_logs_each_term():
    models = student_models()
    x0 = (torch.rand(2, 3, 4, 8, 8) * 1.6 - 0.8).requires_grad_(True)
    models.cache[STUDENT_X0] = ConsistencyPrediction(x0=x0, t=torch.zeros(2), w=torch.zeros(2))
    obj = RewardFeedback(BETAS, weight=0.5)
    out = obj({"videos": torch.rand(2, 4, 3, 8, 8), "prompts": PROMPTS[:2]}, models)
    scores = by_hand(models, x0, PROMPTS[:2])
    assert set(out) == {"reward_img", "reward_vid", "img", "vid"} and obj.loss_terms == ("reward_img", "reward_vid")
    for name, beta in BETAS.items():
        torch.testing.assert_close(out[f"reward_{name}"], -beta * scores[name].mean())
        torch.testing.assert_close(out[name], scores[name].mean().detach())
        assert not out[name].requires_grad
    torch.testing.assert_close(obj.total(out), -0.5 * sum(b * scores[n].mean() for n, b in BETAS.items()))
    obj.total(out).backward()
    assert x0.grad.abs().sum() > 0  # through the critics and the differentiable decode


@pytest.mark.parametrize("shared", [False, True])
def test_gradients_reach_the_student_not_the_critics(shared):
    models = student_models()
    batch = {**key_batch(models.student, batch=2), "prompt": PROMPTS[:2]}
    if shared:  # the trajectory objective ran first: its key-point predictions are reused, no second forward
        key_point_predictions(batch, models)
    calls = []
    models.student.register_forward_hook(lambda *a: calls.append(1))
    out = RewardFeedback(BETAS, source="trajectory")(batch, models)
    assert len(calls) == (0 if shared else 1)
    sum(out[k] for k in ("reward_img", "reward_vid")).backward()
    grads = [p.grad for p in models.student.denoiser.parameters()]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
    assert all(p.grad is None for c in models.critics.values() for p in c.parameters())


def test_trajectory_x0_matches_the_key_point_it_came_from():
    models = student_models()
    batch = {**key_batch(models.student, batch=2), "prompt": PROMPTS[:2]}
    torch.manual_seed(3)
    x0 = student_x0(batch, models, "trajectory")
    torch.manual_seed(3)
    j = torch.randint(0, batch["latents"].shape[1] - 1, (2,))
    x, t = batch["latents"][torch.arange(2), j], batch["timesteps"][torch.arange(2), j]
    with torch.no_grad():
        expected = models.student.schedule.to_x0(models.student_raw(x, t, batch["text"]), x, t)
    torch.testing.assert_close(x0.detach(), expected)
    torch.testing.assert_close(key_point_x0(key_point_predictions(batch, models), j, models).detach(), expected)


def test_videos_source_denoises_real_clips_once():
    models = student_models()
    out = RewardFeedback(BETAS, source="videos")({"videos": torch.rand(2, 4, 3, 8, 8), "prompts": PROMPTS[:2]},
                                                 models)
    assert out["reward_vid"].requires_grad and torch.isfinite(out["reward_vid"])


def test_configuration_errors():
    with pytest.raises(UserError, match="critics is empty"):
        RewardFeedback({})
    with pytest.raises(UserError, match="unknown reward source 'sample'"):
        RewardFeedback(BETAS, source="sample")
    models = student_models({"img": tiny_critics()["img"]})
    with pytest.raises(UserError, match=r"RewardFeedback uses critics \['vid'\], but model.critics has \['img'\]"):
        RewardFeedback(BETAS)({"prompts": PROMPTS[:2]}, models)
    with pytest.raises(UserError, match="found no x0 prediction"):
        RewardFeedback({"img": 1.0})({"prompts": PROMPTS[:2]}, models)


def test_build_critics_from_specs(monkeypatch, tmp_path):
    with pytest.warns(UserWarning, match="critic 'vid' has no checkpoint: random weights"):
        critics = build_critics({"img": {"critic": "toy-image", "checkpoint": None, "size": "tiny", "num_frames": 3},
                                 "vid": {"critic": "toy-video", "checkpoint": None, "size": "tiny",
                                         "grad_checkpointing": True}})
    assert critics["img"].frames == 3 and critics["vid"].model.vision_encoder.transformer.grad_checkpointing
    assert all(not p.requires_grad for p in critics.parameters())
    assert not any(m.training for c in critics.values() for m in c.modules())
    videos = torch.rand(2, 4, 3, 8, 8, requires_grad=True)
    critics["vid"](videos, PROMPTS[:2]).sum().backward()  # checkpointed and frozen: gradients still reach pixels
    assert videos.grad.abs().sum() > 0
    with pytest.raises(UserError, match="critic 'hps' \\(hpsv2\\) needs a checkpoint"):
        build_critics({"hps": {"critic": "hpsv2"}})
    monkeypatch.setitem(toy_critics.SHIPPED_CRITICS, "toy-image", tmp_path / "missing.safetensors")
    with pytest.raises(UserError, match="shipped toy-image weights are missing"):
        build_critics(["toy-image"])  # a list of names: the shipped weights
    path = toy_critics.save_toy_critic(critics["img"], tmp_path / "img.safetensors")
    assert build_critics({"toy-image": str(path)})["toy-image"].cfg == toy_critics.TOY_SIZES["tiny"]


# -- the distillation module ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("reward_toy")
    teacher = tiny_toy()
    save_backbone(teacher, root / "teacher")
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # module fixtures run before the suite's one-thread fixture
    try:
        synthesize(teacher, PROMPTS[:2], root / "data", key_indices=(0, 2, 4), steps=4, dtype="float32",
                   shard_size=2, batch_size=2, progress=False)
    finally:
        torch.set_num_threads(before)
    return root


def critic_specs() -> dict:
    return {"img": {"critic": "toy-image", "checkpoint": None, "size": "tiny"}, "vid": tiny_critics()["vid"]}


def test_one_fit_step_with_reward_feedback(toy):
    model = Distillation(str(toy / "teacher"), [TrajectoryGuidance(), RewardFeedback(BETAS)], lr=1e-3,
                         critics=critic_specs())
    critic_before = [p.clone() for p in model.critics.parameters()]
    student_before = [p.clone() for p in model.student.denoiser.parameters()]
    trainer = L.Trainer(max_steps=1, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, datamodule=TrajectoryData(str(toy / "data"), batch_size=2, shuffle=False))
    logged = trainer.callback_metrics
    assert {"loss/trajectory", "loss/reward_img", "loss/reward_vid", "reward/img", "reward/vid", "loss/total"} <= set(
        logged)
    torch.testing.assert_close(logged["loss/reward_vid"], -2.0 * logged["reward/vid"])
    assert all(torch.equal(a, b) for a, b in zip(critic_before, model.critics.parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(student_before, model.student.denoiser.parameters()))
    assert not any(m.training for c in model.critics.values() for m in c.modules())  # after Lightning's .train()
    assert not any(k.startswith("critics.") for k in _saved_keys(model))


def _saved_keys(model: Distillation) -> list[str]:
    checkpoint = {"state_dict": model.state_dict()}
    model.on_save_checkpoint(checkpoint)
    return list(checkpoint["state_dict"])


def test_distillation_without_critics_is_a_user_error(toy):
    with pytest.raises(UserError, match=r"RewardFeedback needs critics \(reward critics \(model.critics\)\)"):
        Distillation(str(toy / "teacher"), [TrajectoryGuidance(), RewardFeedback(BETAS)])
    with pytest.raises(UserError, match=r"uses critics \['vid'\], but model.critics has \['img'\]"):
        Distillation(str(toy / "teacher"), [RewardFeedback(BETAS)], critics={"img": critic_specs()["img"]})
