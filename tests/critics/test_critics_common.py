"""What every official critic must do, checked on tiny random weights saved in the official file layout."""

from __future__ import annotations

import pytest
import torch

from vdistill.errors import UserError

NAMES = ["hpsv2", "pickscore", "viclip", "internvideo2"]
PROMPTS = ["a red car drives slowly", "the dog runs on the beach"]


def _rename_first_weight(sd: dict) -> dict:
    key = next(k for k in sd if k.endswith(".weight") and "position_ids" not in k)
    sd = dict(sd)
    sd[key.replace(".weight", ".weightz")] = sd.pop(key)
    return sd


@pytest.fixture(params=NAMES)
def critic(request, make_critic):
    return make_critic(request.param)


def test_embeddings_normalised_with_right_shape(critic):
    torch.manual_seed(0)
    t = critic.frames if critic.kind == "video" else 1
    v = critic.embed_video(torch.rand(3, t, 3, 36, 48))
    txt = critic.embed_text(PROMPTS)
    assert v.shape[0] == 3 and txt.shape[0] == 2 and v.shape[1] == txt.shape[1]
    torch.testing.assert_close(v.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(txt.norm(dim=-1), torch.ones(2))


def test_scores_shape_finite_and_differentiable(critic):
    torch.manual_seed(0)
    videos = torch.rand(2, 6, 3, 32, 40, requires_grad=True)
    s = critic(videos, PROMPTS)
    assert s.shape == (2,) and torch.isfinite(s).all()
    s.sum().backward()
    assert torch.isfinite(videos.grad).all() and videos.grad.abs().sum() > 0


def test_frozen_and_stays_in_eval(critic):
    assert not any(p.requires_grad for p in critic.parameters())
    critic.train()
    assert not critic.training and not any(m.training for m in critic.modules())
    videos = torch.rand(2, 4, 3, 32, 32, requires_grad=True)
    critic(videos, PROMPTS).sum().backward()
    assert all(p.grad is None for p in critic.parameters())


def test_all_frames_in_order_when_t_equals_frame_count(critic):
    videos = torch.rand(2, critic.frames, 3, 30, 30)
    torch.testing.assert_close(critic.select_frames(videos), videos)
    s1, s2 = critic(videos, PROMPTS), critic(videos, PROMPTS)
    torch.testing.assert_close(s1, s2)  # deterministic: no random frame choice left


def test_image_critics_average_per_frame_scores(make_critic):
    critic = make_critic("hpsv2", num_frames=3)
    videos = torch.rand(2, 3, 3, 28, 28)
    text = critic.embed_text(PROMPTS)
    per_frame = torch.stack([(critic.embed_video(videos[:, i:i + 1]) * text).sum(-1) for i in range(3)], 1)
    torch.testing.assert_close(critic(videos, PROMPTS), per_frame.mean(1))


@pytest.mark.parametrize("name", NAMES)
def test_mismatched_checkpoint_lists_keys(make_critic, name):
    with pytest.raises(UserError, match=r"missing keys \(1\) \[.*\.weight\]; unexpected keys \(1\) \[.*weightz"):
        make_critic(name, mutate=_rename_first_weight)


@pytest.mark.parametrize("name", NAMES)
def test_removed_key_is_reported(make_critic, name):
    def drop_last(sd):
        return dict(list(sd.items())[1:])

    with pytest.raises(UserError, match=r"missing keys \(1\) \[.+\]; unexpected keys \(0\) \[\]"):
        make_critic(name, mutate=drop_last)


@pytest.mark.parametrize("name", NAMES)
def test_wrong_prompt_count_and_shape_are_user_errors(make_critic, name):
    critic = make_critic(name)
    with pytest.raises(UserError, match="2 videos but 1 prompts"):
        critic(torch.rand(2, 1, 3, 28, 28), ["one"])
    with pytest.raises(UserError, match=r"\[B, T, 3, H, W\]"):
        critic(torch.rand(2, 3, 28, 28), PROMPTS)


@pytest.mark.parametrize("name", ["hpsv2", "viclip", "internvideo2"])
def test_grad_checkpointing_gives_the_same_gradient(make_critic, name):
    critic = make_critic(name)
    videos = torch.rand(2, critic.frames, 3, 28, 28, requires_grad=True)
    critic(videos, PROMPTS).sum().backward()
    grad = videos.grad.clone()
    videos.grad = None
    critic.set_grad_checkpointing(True)
    critic(videos, PROMPTS).sum().backward()
    torch.testing.assert_close(videos.grad, grad)


def test_pickscore_has_no_grad_checkpointing(make_critic):
    with pytest.raises(UserError, match="does not offer gradient checkpointing"):
        make_critic("pickscore").set_grad_checkpointing(True)


def test_image_critics_embed_one_frame_per_video(make_critic):
    critic = make_critic("hpsv2", num_frames=2)
    with pytest.raises(UserError, match="embed_video takes T = 1 frame, got T = 3"):
        critic.embed_video(torch.rand(2, 3, 3, 28, 28))
    assert critic.embed_frames(torch.rand(5, 3, 28, 28)).shape == (5, 16)
