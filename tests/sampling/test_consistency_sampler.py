"""The multistep consistency sampler against diffusers' LCMScheduler (timesteps and the whole loop on a fixed
model), its seeding, and its use by ``generate`` for consistency students."""

from __future__ import annotations

import pytest
import torch
from diffusers import LCMScheduler

from vdistill.backbones.student import set_consistency_sampling
from vdistill.backbones.toy import ToyBackbone
from vdistill.diffusion.consistency import consistency_grid, consistency_output, lcm_timesteps
from vdistill.diffusion.schedules import DDPMSchedule, FlowSchedule
from vdistill.errors import UserError
from vdistill.sampling.consistency import sample_consistency, seeded_noise
from vdistill.sampling.generate import generate
from vdistill.sampling.sampler import initial_noise

PROMPTS = ["a red circle moving left", "a blue square moving up", "a green triangle moving right"]


def tiny_student(schedule) -> ToyBackbone:
    """A random tiny toy model with a live guidance embedding: a fixed, deterministic "fake" student."""
    torch.manual_seed(0)
    model = ToyBackbone(schedule=schedule, base_channels=8, channel_mult=(1, 2), emb_dim=16, text_dim=16,
                        num_frames=4, size=8)
    model.enable_guidance_embedding()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.requires_grad_(False).eval()


@pytest.mark.parametrize("original", [50, 200])
@pytest.mark.parametrize("steps", [1, 2, 4, 8])
def test_timesteps_are_lcm_schedulers(steps, original):
    lcm = LCMScheduler()
    lcm.set_timesteps(steps, original_inference_steps=original)
    torch.testing.assert_close(lcm_timesteps(DDPMSchedule(), steps, original), lcm.timesteps.float())


def test_grids():
    torch.testing.assert_close(consistency_grid(DDPMSchedule(), 50)[:3], torch.tensor([999.0, 979.0, 959.0]))
    assert consistency_grid(DDPMSchedule(), 50)[-2:].tolist() == [19.0, 0.0]
    flow = FlowSchedule(shift=3.0)
    torch.testing.assert_close(consistency_grid(flow, 8), flow.sampling_timesteps(8))
    torch.testing.assert_close(lcm_timesteps(flow, 4, 8), flow.sampling_timesteps(8)[[0, 2, 4, 6]])
    with pytest.raises(UserError, match="1..50"):
        lcm_timesteps(DDPMSchedule(), 51, 50)


@pytest.mark.parametrize("prediction,clip", [("epsilon", None), ("v_prediction", None), ("epsilon", 1.0)])
@pytest.mark.parametrize("steps", [1, 2, 4, 8])
def test_sampling_loop_is_lcm_schedulers(steps, prediction, clip):
    model = tiny_student(DDPMSchedule(prediction_type=prediction, clip_sample=clip))
    text = model.encode_text(PROMPTS[:2])
    noise = initial_noise((3, 4, 8, 8), [10, 11])
    w = torch.full((2,), 7.5)

    lcm = LCMScheduler(prediction_type=prediction, clip_sample=clip is not None)
    lcm.set_timesteps(steps, original_inference_steps=50)
    gens = [torch.Generator().manual_seed(s) for s in (1, 2)]
    x = noise
    with torch.no_grad():
        for t in lcm.timesteps:
            x, denoised = lcm.step(model(x, t.float().expand(2), text, w), t, x, generator=gens, return_dict=False)

    ours = sample_consistency(model, noise, text, steps=steps, guidance=7.5, original_steps=50,
                              generators=[torch.Generator().manual_seed(s) for s in (1, 2)])
    torch.testing.assert_close(ours.timesteps, lcm.timesteps.float())
    torch.testing.assert_close(ours.latents, denoised, rtol=1e-4, atol=1e-4)


def test_flow_student_one_step_is_its_consistency_output():
    model = tiny_student(FlowSchedule(shift=3.0))
    text = model.encode_text(PROMPTS[:2])
    noise = initial_noise((3, 4, 8, 8), [0, 1])
    t, w = torch.ones(2), torch.full((2,), 3.0)
    with torch.no_grad():
        ref = consistency_output(model.schedule, model(noise, t, text, w), noise, t)
    out = sample_consistency(model, noise, text, steps=1, guidance=3.0, original_steps=8)
    torch.testing.assert_close(out.latents, ref)


def test_generate_uses_the_consistency_sampler_with_the_students_own_settings():
    model = tiny_student(DDPMSchedule())
    set_consistency_sampling(model, guidance=4.0, original_steps=50, steps=2)
    assert model.defaults.steps == 2 and model.defaults.cfg == 1.0
    got = generate(model, PROMPTS, seed=5, batch_size=2, progress=False).videos

    noise, gens = seeded_noise((3, 4, 8, 8), [5, 6, 7])
    torch.testing.assert_close(noise, initial_noise((3, 4, 8, 8), [5, 6, 7]))
    ref = sample_consistency(model, noise, model.encode_text(PROMPTS), steps=2, guidance=4.0, generators=gens)
    torch.testing.assert_close(got, model.decode_latents(ref.latents))  # seeds, not the batching, decide
    other_w = generate(model, PROMPTS, seed=5, guidance=8.0, progress=False).videos
    assert not torch.allclose(other_w, got)  # the embedded guidance scale reaches the student
