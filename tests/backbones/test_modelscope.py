"""ModelScopeBackbone on a tiny random ModelScope T2V folder (tests/helpers/diffusers_folders.py), checked against
diffusers' pipeline."""

from __future__ import annotations

import shutil

import pytest
import torch

from vdistill.backbones.modelscope import ModelScopeBackbone, ddpm_schedule_from_config
from vdistill.config import from_config, to_config
from vdistill.errors import UserError
from vdistill.sampling.sampler import sample_latents

FRAMES, SIZE = 8, 32  # latents [B, 4, 8, 4, 4]


@pytest.fixture(scope="module")
def teacher(modelscope_dir) -> ModelScopeBackbone:
    return ModelScopeBackbone(str(modelscope_dir))


def _noise(model: ModelScopeBackbone, batch: int = 2, seed: int = 0) -> torch.Tensor:
    shape = model.latent_shape(FRAMES, SIZE, SIZE)
    return torch.randn(batch, *shape, generator=torch.Generator().manual_seed(seed))


def test_loads_parts_schedule_and_config(teacher, modelscope_dir):
    assert teacher.schedule.describe()["beta_schedule"] == "scaled_linear"
    assert teacher.schedule.prediction_type == "epsilon"
    assert teacher.defaults.cfg == 9.0 and teacher.defaults.num_frames == 16 and teacher.defaults.height == 256
    assert teacher.latent_shape(16, 256, 256) == (4, 16, 32, 32)
    assert all(not p.requires_grad for p in teacher.vae.parameters())
    assert all(not p.requires_grad for p in teacher.text_encoder.parameters())
    assert all(p.requires_grad for p in teacher.denoiser.parameters())
    cfg = to_config(teacher)
    assert cfg["init_args"]["path"] == str(modelscope_dir)
    v = ddpm_schedule_from_config({"beta_schedule": "linear", "prediction_type": "v_prediction", "beta_end": 0.015})
    assert (v.beta_schedule, v.beta_end, v.prediction_type) == ("linear", 0.015, "v_prediction")
    with pytest.raises(UserError, match="multiple of 8"):
        teacher.latent_shape(16, 250, 256)
    rebuilt = from_config({**cfg, "init_args": {**cfg["init_args"], "torch_dtype": "bfloat16"}})
    assert rebuilt.denoiser.dtype == torch.bfloat16 and rebuilt.vae.dtype == torch.bfloat16


def test_text_and_forward_shapes(teacher):
    text = teacher.encode_text(["a red ball", ""])
    assert set(text) == {"states"} and text["states"].shape == (2, 77, 32)
    x = _noise(teacher)
    out = teacher(x, torch.tensor([999.0, 10.0]), text)
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_cfg_is_one_batched_forward(teacher):
    x, t = _noise(teacher), torch.tensor([700.0, 300.0])
    cond, uncond = teacher.encode_text(["a cat", "a dog"]), teacher.encode_text([""])
    with torch.no_grad():
        raw_c = teacher(x, t, cond)
        raw_u = teacher(x, t, {"states": uncond["states"].expand(2, -1, -1)})
        guided = teacher.predict(x, t, cond, uncond, cfg=4.0)
    torch.testing.assert_close(guided, raw_u + 4.0 * (raw_c - raw_u), atol=1e-5, rtol=1e-4)


def test_sampling_captures_trajectory(teacher):
    x = _noise(teacher)
    res = sample_latents(teacher, x, teacher.encode_text(["a cat", "a dog"]), steps=3,
                         uncond=teacher.encode_text([""]), cfg=teacher.defaults.cfg, capture=[0, 1, 3])
    assert res.latents.shape == x.shape and torch.isfinite(res.latents).all()
    assert sorted(res.trajectory) == [0, 1, 3] and len(res.timesteps) == 4
    torch.testing.assert_close(res.trajectory[0], x)
    torch.testing.assert_close(res.trajectory[3], res.latents)


def test_encode_decode_shapes_and_range(teacher):
    video = torch.rand(1, FRAMES, 3, SIZE, SIZE)
    z = teacher.encode_video(video)
    assert z.shape == (1, *teacher.latent_shape(FRAMES, SIZE, SIZE))
    frame = teacher.vae.encode(video[:, 2] * 2 - 1).latent_dist.mean * teacher.vae.config.scaling_factor
    torch.testing.assert_close(z[:, :, 2], frame, atol=1e-5, rtol=1e-4)
    z = z.clone().requires_grad_(True)
    pixels = teacher.decode_latents(z)
    assert pixels.shape == video.shape and pixels.min() >= 0 and pixels.max() <= 1
    pixels.mean().backward()  # rewards back-propagate through the frozen VAE into the latents
    assert z.grad is not None and torch.isfinite(z.grad).all()


def test_guidance_embedding(modelscope_dir):
    model = ModelScopeBackbone(str(modelscope_dir))
    x, t, text = _noise(model), torch.tensor([500.0, 500.0]), model.encode_text(["a cat", "a cat"])
    with torch.no_grad():
        plain = model(x, t, text)
        proj = model.enable_guidance_embedding()
        assert proj.out_features == model.denoiser.time_embedding.linear_2.out_features
        torch.testing.assert_close(model(x, t, text, guidance=torch.tensor([7.5, 7.5])), plain)
        torch.nn.init.normal_(proj.weight, std=0.5)
        low = model(x, t, text, guidance=torch.tensor([5.0, 5.0]))
        high = model(x, t, text, guidance=torch.tensor([15.0, 15.0]))
        mixed = model(x, t, text, guidance=torch.tensor([5.0, 15.0]))
    assert not torch.allclose(low, plain) and not torch.allclose(low, high)
    torch.testing.assert_close(mixed[0], low[0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(mixed[1], high[1], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(model(x, t, text).detach(), plain)  # no w: the hook adds nothing


def test_missing_folder_is_user_error(tmp_path, modelscope_dir):
    with pytest.raises(UserError, match="does not exist"):
        ModelScopeBackbone(str(tmp_path / "nowhere"))
    partial = tmp_path / "partial"
    shutil.copytree(modelscope_dir / "unet", partial / "unet")
    with pytest.raises(UserError, match="vae, text_encoder, tokenizer"):
        ModelScopeBackbone(str(partial))


def test_matches_diffusers_pipeline(teacher):
    """DDIM with CFG 9 of the teacher == diffusers' TextToVideoSDPipeline (trailing grid, 4 steps)."""
    from diffusers import DDIMScheduler

    try:  # deprecated in diffusers, may disappear
        from diffusers import TextToVideoSDPipeline
    except ImportError:
        pytest.skip("this diffusers has no TextToVideoSDPipeline")

    scheduler = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                              set_alpha_to_one=True, timestep_spacing="trailing")
    pipe = TextToVideoSDPipeline(vae=teacher.vae, text_encoder=teacher.text_encoder, tokenizer=teacher.tokenizer,
                                 unet=teacher.denoiser, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    noise = _noise(teacher, batch=1, seed=3)
    ref = pipe("a red ball", num_inference_steps=4, guidance_scale=9.0, height=SIZE, width=SIZE, num_frames=FRAMES,
               latents=noise.clone(), output_type="pt").frames
    res = sample_latents(teacher, noise, teacher.encode_text(["a red ball"]), steps=4,
                         uncond=teacher.encode_text([""]), cfg=9.0)
    torch.testing.assert_close(teacher.decode_latents(res.latents), ref.float(), atol=1e-4, rtol=1e-3)
