"""Classifier-free guidance, the LCM guidance-scale embedding and the consistency boundary scalings."""

import pytest
import torch
from diffusers import LCMScheduler
from diffusers.pipelines.latent_consistency_models.pipeline_latent_consistency_text2img import (
    LatentConsistencyModelPipeline,
)

from vdistill.diffusion import apply_cfg, boundary_scalings, guidance_scale_embedding


def _randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# -- classifier-free guidance --------------------------------------------------------------------------------
def test_cfg_scalar_closed_form():
    cond, uncond = _randn(3, 4, 2, 5, 5, seed=1), _randn(3, 4, 2, 5, 5, seed=2)
    torch.testing.assert_close(apply_cfg(cond, uncond, 7.5), uncond + 7.5 * (cond - uncond))
    torch.testing.assert_close(apply_cfg(cond, uncond, 1.0), cond)
    torch.testing.assert_close(apply_cfg(cond, uncond, 0.0), uncond)


def test_cfg_per_sample_scale():
    cond, uncond = _randn(3, 4, 2, 5, 5, seed=3), _randn(3, 4, 2, 5, 5, seed=4)
    w = torch.tensor([1.0, 4.5, 12.0])
    out = apply_cfg(cond, uncond, w)
    for b in range(3):
        torch.testing.assert_close(out[b], uncond[b] + w[b] * (cond[b] - uncond[b]))
    assert apply_cfg(cond.half(), uncond.half(), w).dtype == torch.float16


# -- LCM guidance-scale embedding ----------------------------------------------------------------------------
@pytest.mark.parametrize("dim", (256, 257, 512))
def test_guidance_embedding_matches_diffusers_lcm_pipeline(dim):
    w = torch.rand(60, generator=torch.Generator().manual_seed(0)) * 16
    w = torch.cat([torch.tensor([0.0, 1.0, 7.5, 15.0]), w])
    # get_guidance_scale_embedding does not use self
    ref = LatentConsistencyModelPipeline.get_guidance_scale_embedding(None, w, embedding_dim=dim)
    ours = guidance_scale_embedding(w, dim)
    assert ours.shape == (len(w), dim) and ours.dtype == torch.float32
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-6)


def test_guidance_embedding_dtype():
    w = torch.tensor([3.0, 9.0])
    ref = LatentConsistencyModelPipeline.get_guidance_scale_embedding(None, w, embedding_dim=256)
    out = guidance_scale_embedding(w, 256, dtype=torch.bfloat16)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, ref.to(torch.bfloat16))


# -- consistency boundary scalings ---------------------------------------------------------------------------
def test_boundary_scalings_match_diffusers_lcm():
    scheduler = LCMScheduler()  # timestep_scaling 10, sigma_data 0.5
    t = torch.cat([torch.arange(-1, 1000, dtype=torch.float32), torch.tensor([0.25, 0.5, 19.5])])
    c_skip, c_out = boundary_scalings(t)
    for i, ti in enumerate(t.tolist()):
        ref_skip, ref_out = scheduler.get_scalings_for_boundary_condition_discrete(ti)
        assert c_skip[i].item() == pytest.approx(ref_skip, rel=1e-6, abs=1e-9)
        assert c_out[i].item() == pytest.approx(ref_out, rel=1e-6, abs=1e-9)


def test_boundary_scalings_options_and_boundary():
    t = torch.tensor([0.0, 1.0, 50.0, 999.0])
    c_skip, c_out = boundary_scalings(t, sigma_data=0.7, timestep_scaling=2.0)
    scaled = t * 2.0
    torch.testing.assert_close(c_skip, 0.49 / (scaled**2 + 0.49))
    torch.testing.assert_close(c_out, scaled / (scaled**2 + 0.49) ** 0.5)
    c_skip, c_out = boundary_scalings(torch.tensor([0.0, 999.0]))
    assert (c_skip[0].item(), c_out[0].item()) == (1.0, 0.0)  # f(x, 0) = x
    assert c_skip[1].item() < 1e-7 and c_out[1].item() == pytest.approx(1.0)
