"""``RewardFeedback(decode_subset=true)``: the VAE decodes only the frames the critics score, and the reward and its
gradient equal those of the whole decode (same random frames); ModelScope's image VAE decodes the needed frames
alone, Wan's causal VAE the latents up to the last needed; HunyuanVideo's VAE is not causal that way (whole
decode)."""

from __future__ import annotations

import pytest
import torch
from objective_helpers import PROMPTS, tiny_toy

from vdistill.critics import load_critic
from vdistill.objectives.base import Models
from vdistill.objectives.consistency import ConsistencyPrediction
from vdistill.objectives.reward import STUDENT_X0, RewardFeedback

pytestmark = pytest.mark.filterwarnings("ignore:critic .* has no checkpoint")


def backbone(case: str, request):
    """The student (a frozen teacher serves: only its VAE runs) and its pixel video size ``(frames, height)``."""
    if case == "toy":
        return tiny_toy(), (6, 8)
    if case == "modelscope":
        from vdistill.backbones.modelscope import ModelScopeBackbone

        return ModelScopeBackbone(str(request.getfixturevalue("modelscope_dir"))), (6, 32)
    from vdistill.backbones.wan import WanBackbone

    return WanBackbone(str(request.getfixturevalue("wan_dir"))), (13, 32)


class DecodeCounter:
    """Wraps ``model.decode_latents``: counts the latent frames it decodes (videos x latent frames)."""

    def __init__(self, model) -> None:
        self.frames, self.inner = 0, model.decode_latents
        model.decode_latents = self

    def __call__(self, latents):
        self.frames += latents.shape[0] * latents.shape[2]
        return self.inner(latents)


def critics() -> dict:
    torch.manual_seed(0)
    return {"img": load_critic("toy-image", size="tiny", num_frames=2),
            "vid": load_critic("toy-video", size="tiny", num_frames=2)}


def reward(model, x0_init: torch.Tensor, subset: bool, seed: int):
    models = Models(student=model, critics=critics())
    x0 = x0_init.clone().requires_grad_(True)
    models.cache[STUDENT_X0] = ConsistencyPrediction(x0=x0, t=torch.zeros(2), w=torch.zeros(2))
    counter = DecodeCounter(model)
    torch.manual_seed(seed)
    try:
        out = RewardFeedback({"img": 1.0, "vid": 2.0}, decode_subset=subset)({"prompts": PROMPTS[:2]}, models)
    finally:
        del model.decode_latents
    (out["reward_img"] + out["reward_vid"]).backward()
    return out, x0.grad, counter.frames


@pytest.mark.parametrize("case", ["toy", "modelscope", "wan"])
def test_the_reward_of_the_scored_frames_equals_the_whole_decode(case, request):
    model, (frames, size) = backbone(case, request)
    torch.manual_seed(0)
    x0 = torch.randn(2, *model.latent_shape(frames, size, size)) * 0.5
    whole_frames = 2 * x0.shape[2]
    for seed in range(3):
        full, grad_full, n_full = reward(model, x0, False, seed)
        part, grad_part, n_part = reward(model, x0, True, seed)
        assert n_full == whole_frames and n_part <= n_full
        for key in ("reward_img", "reward_vid", "img", "vid"):
            torch.testing.assert_close(part[key], full[key], rtol=1e-5, atol=1e-6, msg=f"seed {seed}: {key}")
        torch.testing.assert_close(grad_part, grad_full, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("case", ["toy", "modelscope", "wan"])
def test_decode_frames_decodes_only_what_the_frames_need(case, request):
    model, (frames, size) = backbone(case, request)
    torch.manual_seed(0)
    x0 = torch.randn(2, *model.latent_shape(frames, size, size)) * 0.5
    pick = torch.tensor([[0, 5, 0], [2, 2, 1]])  # pixel frames per video (two critics may share a frame)
    with torch.no_grad():
        want = model.decode_latents(x0)
        counter = DecodeCounter(model)
        got = model.decode_frames(x0, pick)
    del model.decode_latents
    torch.testing.assert_close(got, want[torch.arange(2)[:, None], pick], rtol=1e-5, atol=1e-6)
    # per-frame VAEs: the 4 distinct (video, frame) pairs of 12; Wan: latent frames 0..2 of 4 (pixel frame 5 is in
    # latent frame 2), for both videos
    assert counter.frames == (2 * 3 if case == "wan" else 4)
    assert model.pixel_frames(x0.shape[2]) == frames


def test_hunyuan_decodes_the_whole_video_because_a_prefix_decodes_otherwise(request):
    from vdistill.backbones.hunyuan import HunyuanVideoBackbone

    model = HunyuanVideoBackbone(str(request.getfixturevalue("hunyuan_pipeline_dir")))
    torch.manual_seed(0)
    z = torch.randn(1, *model.latent_shape(9, 32, 32))
    with torch.no_grad():
        whole = model.decode_latents(z)
        prefix = model.decode_latents(z[:, :, :2])  # pixel frames 0..4
        pick = torch.tensor([[0, 4]])
        torch.testing.assert_close(model.decode_frames(z, pick), whole[:, [0, 4]])
    assert model.pixel_frames(z.shape[2]) == 9 == whole.shape[1]
    # if a diffusers release makes this VAE causal, HunyuanVideoBackbone can decode prefixes as Wan does
    assert (prefix - whole[:, :5]).abs().max() > 1e-3
