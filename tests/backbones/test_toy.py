"""The toy backbone: forward, CFG, sampling with trajectory capture, guidance embedding, save / load."""

from __future__ import annotations

import pytest
import torch

from vdistill.backbones.io import load_backbone, save_backbone
from vdistill.backbones.toy import TimeEmbedding, ToyBackbone
from vdistill.diffusion import DDPMSchedule, FlowSchedule
from vdistill.errors import UserError
from vdistill.sampling.sampler import initial_noise, sample_latents


def tiny(schedule=None) -> ToyBackbone:
    torch.manual_seed(0)
    model = ToyBackbone(schedule=schedule, base_channels=8, channel_mult=(1, 2), emb_dim=16, text_dim=16,
                        num_frames=4, size=8)
    for p in model.parameters():  # zero-initialised output layers would hide bugs
        torch.nn.init.normal_(p, std=0.1)
    return model.eval()


@pytest.fixture(params=["flow", "ddpm"])
def model(request) -> ToyBackbone:
    return tiny(FlowSchedule() if request.param == "flow" else DDPMSchedule(beta_schedule="linear"))


def test_forward_shape_and_text(model):
    x = torch.randn(2, *model.latent_shape(4, 8, 8))
    text = model.encode_text(["a red circle moving left", ""])
    out = model(x, torch.tensor([0.5, 0.1]) if model.schedule.kind == "flow" else torch.tensor([500.0, 20.0]), text)
    assert out.shape == x.shape and torch.isfinite(out).all()
    null = model.encode_text(["", ""])["pooled"]
    assert torch.equal(null[0], model.text_encoder.null) and torch.equal(text["pooled"][1], null[1])


def test_cfg_is_one_batched_forward(model):
    x = torch.randn(3, *model.latent_shape(4, 8, 8))
    t = model.schedule.sampling_timesteps(4)[1].expand(3)
    text, uncond = model.encode_text(["a blue square moving up"] * 3), model.encode_text([""])
    calls = []
    hook = model.denoiser.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    guided = model.predict(x, t, text, uncond, cfg=3.0)
    hook.remove()
    assert calls == [6]
    cond, unc = model(x, t, text), model(x, t, {k: v.expand(3, -1) for k, v in uncond.items()})
    torch.testing.assert_close(guided, unc + 3.0 * (cond - unc), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dim", (2, 7, 16, 33, 128))
def test_time_features_are_the_ddpm_sinusoids_cos_first(dim):
    # the shipped toy teachers were trained on these features: cos(t f_i) then sin(t f_i), f_i = 10000^(-i / half),
    # a zero column for an odd dim
    t = torch.cat([torch.tensor([0.0, 1.0, 999.0, 1000.0]), torch.rand(40, generator=torch.Generator().manual_seed(0))
                   * 1000])
    half = dim // 2
    args = t.double()[:, None] * 10000.0 ** (-torch.arange(half, dtype=torch.float64) / half)
    want = torch.cat([args.cos(), args.sin(), torch.zeros(len(t), dim % 2, dtype=torch.float64)], dim=1)
    embed = TimeEmbedding(dim)
    seen = []
    embed.mlp[0].register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    assert embed(t).shape == (len(t), dim)
    # float32 spaces its numbers 6e-5 apart near t = 1000: the argument of sin / cos is rounded that much
    torch.testing.assert_close(seen[0].double(), want, rtol=0, atol=1e-4)


def test_sampling_captures_trajectory(model):
    noise = initial_noise(model.latent_shape(4, 8, 8), [1, 2])
    res = sample_latents(model, noise, model.encode_text(["a", "b"]), steps=4, uncond=model.encode_text([""]),
                         cfg=2.0, capture=[0, 2, 4])
    assert sorted(res.trajectory) == [0, 2, 4]
    torch.testing.assert_close(res.trajectory[0], noise)
    torch.testing.assert_close(res.trajectory[4], res.latents)
    assert len(res.timesteps) == 5 and torch.isfinite(res.latents).all()
    videos = model.decode_latents(res.latents)
    assert videos.shape == (2, 4, 3, 8, 8) and videos.min() >= 0 and videos.max() <= 1


def test_noise_is_per_seed_not_per_batch():
    a = initial_noise((3, 2, 4, 4), [5, 6])
    b = initial_noise((3, 2, 4, 4), [6])
    torch.testing.assert_close(a[1], b[0])


def test_guidance_embedding_zero_init_then_changes_output(model):
    x = torch.randn(2, *model.latent_shape(4, 8, 8))
    t = model.schedule.sampling_timesteps(4)[1].expand(2)
    text = model.encode_text(["a red circle moving left"] * 2)
    before = model(x, t, text)
    with pytest.raises(UserError, match="guidance"):
        model(x, t, text, guidance=torch.tensor([5.0, 5.0]))
    proj = model.enable_guidance_embedding()
    torch.testing.assert_close(model(x, t, text, guidance=torch.tensor([5.0, 9.0])), before)
    torch.nn.init.normal_(proj.weight, std=0.1)
    a, b = model(x, t, text, guidance=torch.tensor([5.0, 5.0])), model(x, t, text, guidance=torch.tensor([12.0, 12.0]))
    assert not torch.allclose(a, b)
    torch.testing.assert_close(model(x, t, text), before)  # no guidance given: the hook adds nothing


def test_encode_decode_roundtrip(model):
    videos = torch.rand(2, 4, 3, 8, 8)
    torch.testing.assert_close(model.decode_latents(model.encode_video(videos)), videos)


def test_save_load_roundtrip(model, tmp_path):
    model.enable_guidance_embedding()
    save_backbone(model, tmp_path / "m")
    loaded = load_backbone(tmp_path / "m")
    assert type(loaded.schedule) is type(model.schedule) and loaded.has_guidance_embedding
    for (k, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), k


def test_load_errors(tmp_path):
    with pytest.raises(UserError, match="toy-flow"):
        load_backbone("no-such-model")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="backbone.yaml"):
        load_backbone(tmp_path / "empty")


def test_mismatched_weights_name_the_keys(tmp_path):
    save_backbone(tiny(), tmp_path / "m")
    bigger = ToyBackbone(base_channels=8, channel_mult=(1, 2, 2), emb_dim=16, text_dim=16)
    save_backbone(bigger, tmp_path / "b")
    (tmp_path / "m" / "model.safetensors").replace(tmp_path / "m" / "other")
    (tmp_path / "b" / "model.safetensors").replace(tmp_path / "m" / "model.safetensors")
    with pytest.raises(UserError, match=r"unexpected keys: \[denoiser\.down\.2"):
        load_backbone(tmp_path / "m")


def test_the_shipped_2step_student_samples_from_a_fresh_install(tmp_path):
    """``vdistill sample --model toy-flow-2step --prompts toy``: two steps without CFG, and on the same seeds its
    videos beat the teacher's own at the same two steps (with CFG) on quality."""
    import json

    from vdistill.backbones.io import load_backbone, shipped_models
    from vdistill.cli import main

    assert "toy-flow-2step" in shipped_models()
    student = load_backbone("toy-flow-2step")
    assert student.defaults.steps == 2 and student.defaults.cfg == 1.0
    scores = {}
    for name, model in (("student", ["toy-flow-2step"]), ("teacher", ["toy-flow", "--steps", "2"])):
        out = tmp_path / name
        main(["sample", "--model", *model, "--prompts", "toy", "--seed", "10000", "--mp4", "0", "--out", str(out)])
        scores[name] = json.loads((out / "toybench.json").read_text())["overall"]
    assert scores["student"]["quality"] > scores["teacher"]["quality"]
