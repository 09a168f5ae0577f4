"""WanBackbone on a tiny random Wan2.1 folder (tests/helpers/diffusers_folders.py), checked against diffusers'
WanPipeline."""

from __future__ import annotations

import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from vdistill.backbones.wan import WanBackbone, flow_schedule_from_config
from vdistill.config import to_config
from vdistill.errors import UserError
from vdistill.sampling.sampler import sample_latents

FRAMES, SIZE, TEXT_LEN = 5, 32, 16  # latents [B, 4, 2, 4, 4]


@pytest.fixture(scope="module")
def teacher(wan_dir) -> WanBackbone:
    return WanBackbone(str(wan_dir), max_text_length=TEXT_LEN)


def _noise(model: WanBackbone, batch: int = 2, seed: int = 0) -> torch.Tensor:
    shape = model.latent_shape(FRAMES, SIZE, SIZE)
    return torch.randn(batch, *shape, generator=torch.Generator().manual_seed(seed))


def test_loads_parts_schedule_and_config(teacher, wan_dir):
    assert teacher.schedule.kind == "flow" and teacher.schedule.shift == 3.0
    assert teacher.defaults.cfg == 5.0 and teacher.defaults.num_frames == 81 and teacher.defaults.fps == 16
    assert teacher.latent_shape(81, 480, 832) == (4, 21, 60, 104)
    with pytest.raises(UserError, match="1 \\+ 4k"):
        teacher.latent_shape(16, 480, 832)
    assert flow_schedule_from_config({"shift": 5.0}).shift == 5.0
    assert flow_schedule_from_config({}).shift == 3.0
    assert all(not p.requires_grad for p in teacher.vae.parameters())
    assert all(not p.requires_grad for p in teacher.text_encoder.parameters())
    assert to_config(teacher)["init_args"]["max_text_length"] == TEXT_LEN
    assert to_config(teacher)["init_args"]["path"] == str(wan_dir)


def test_text_is_zero_padded_like_the_pipeline(teacher):
    from diffusers.pipelines.wan.pipeline_wan import WanPipeline

    prompts = ["a red ball runs on the grass", "", "a  dog\n jumps"]
    states = teacher.encode_text(prompts)["states"]
    assert states.shape == (3, TEXT_LEN, 16)
    lengths = teacher.tokenizer(prompts, return_tensors="pt", padding=True).attention_mask.sum(1)
    for row, n in zip(states, lengths.tolist()):
        assert row[:n].abs().sum() > 0 and (row[n:] == 0).all()
    pipe = SimpleNamespace(tokenizer=teacher.tokenizer, text_encoder=teacher.text_encoder)
    ref = WanPipeline._get_t5_prompt_embeds(pipe, prompts, max_sequence_length=TEXT_LEN, device=torch.device("cpu"),
                                            dtype=torch.float32)
    torch.testing.assert_close(states, ref)


def test_forward_and_cfg(teacher):
    x, t = _noise(teacher), torch.tensor([0.9, 0.3])
    cond, uncond = teacher.encode_text(["a cat", "a dog"]), teacher.encode_text([""])
    with torch.no_grad():
        raw_c = teacher(x, t, cond)
        raw_u = teacher(x, t, {"states": uncond["states"].expand(2, -1, -1)})
        guided = teacher.predict(x, t, cond, uncond, cfg=5.0)
    assert raw_c.shape == x.shape and torch.isfinite(raw_c).all()
    torch.testing.assert_close(guided, raw_u + 5.0 * (raw_c - raw_u), atol=1e-5, rtol=1e-4)


def test_sampling_captures_trajectory(teacher):
    x = _noise(teacher)
    res = sample_latents(teacher, x, teacher.encode_text(["a cat", "a dog"]), steps=3,
                         uncond=teacher.encode_text([""]), cfg=teacher.defaults.cfg, capture=[0, 1, 3])
    assert res.latents.shape == x.shape and torch.isfinite(res.latents).all()
    assert sorted(res.trajectory) == [0, 1, 3]
    torch.testing.assert_close(res.trajectory[3], res.latents)
    assert res.timesteps[0] == 1.0 and res.timesteps[-1] == 0.0


def test_encode_decode_shapes_and_range(teacher):
    video = torch.rand(1, FRAMES, 3, SIZE, SIZE)
    z = teacher.encode_video(video)
    assert z.shape == (1, *teacher.latent_shape(FRAMES, SIZE, SIZE))
    raw = teacher.vae.encode(video.transpose(1, 2) * 2 - 1).latent_dist.mean
    mean, std = torch.tensor(teacher.vae.config.latents_mean), torch.tensor(teacher.vae.config.latents_std)
    assert not torch.allclose(std, torch.ones(4))  # the tiny VAE's statistics are not the identity
    torch.testing.assert_close(z, (raw - mean.view(1, -1, 1, 1, 1)) / std.view(1, -1, 1, 1, 1), atol=1e-5, rtol=1e-4)
    z = z.clone().requires_grad_(True)
    pixels = teacher.decode_latents(z)
    assert pixels.shape == video.shape and pixels.min() >= 0 and pixels.max() <= 1
    pixels.mean().backward()
    assert z.grad is not None and torch.isfinite(z.grad).all()


def test_guidance_embedding(wan_dir):
    model = WanBackbone(str(wan_dir), max_text_length=TEXT_LEN)
    x, t, text = _noise(model), torch.tensor([0.5, 0.5]), model.encode_text(["a cat", "a cat"])
    with torch.no_grad():
        plain = model(x, t, text)
        proj = model.enable_guidance_embedding()
        assert proj.out_features == 24  # inner_dim = 2 heads x 12
        torch.testing.assert_close(model(x, t, text, guidance=torch.tensor([6.0, 6.0])), plain)
        torch.nn.init.normal_(proj.weight, std=0.5)
        low = model(x, t, text, guidance=torch.tensor([3.0, 3.0]))
        mixed = model(x, t, text, guidance=torch.tensor([3.0, 9.0]))
    assert not torch.allclose(low, plain) and not torch.allclose(mixed[1], low[1])
    torch.testing.assert_close(mixed[0], low[0], atol=1e-5, rtol=1e-4)


def test_missing_folder_is_user_error(tmp_path, wan_dir):
    with pytest.raises(UserError, match="does not exist"):
        WanBackbone(str(tmp_path / "nowhere"))
    partial = tmp_path / "partial"
    for part in ("vae", "text_encoder", "tokenizer"):
        shutil.copytree(wan_dir / part, partial / part)
    with pytest.raises(UserError, match="transformer"):
        WanBackbone(str(partial))


def test_matches_diffusers_pipeline(teacher):
    """Euler sampling with CFG and decoding == WanPipeline with a FlowMatchEuler scheduler on the same grid."""
    from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline

    scheduler = FlowMatchEulerDiscreteScheduler(shift=teacher.schedule.shift)
    set_timesteps = scheduler.set_timesteps
    scheduler.set_timesteps = lambda n, device=None: set_timesteps(sigmas=np.linspace(1, 0, n + 1)[:-1], device=device)
    pipe = WanPipeline(tokenizer=teacher.tokenizer, text_encoder=teacher.text_encoder, vae=teacher.vae,
                       transformer=teacher.denoiser, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    noise = _noise(teacher, batch=1, seed=3)
    ref = pipe("a red ball", negative_prompt="", height=SIZE, width=SIZE, num_frames=FRAMES, num_inference_steps=3,
               guidance_scale=5.0, latents=noise.clone(), output_type="pt", max_sequence_length=TEXT_LEN).frames
    res = sample_latents(teacher, noise, teacher.encode_text(["a red ball"]), steps=3,
                         uncond=teacher.encode_text([""]), cfg=5.0)
    torch.testing.assert_close(teacher.decode_latents(res.latents), ref.float(), atol=1e-4, rtol=1e-3)
