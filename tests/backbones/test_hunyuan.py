"""HunyuanVideoBackbone on a tiny random folder written by ``HunyuanVideoPipeline.save_pretrained``
(tests/helpers/diffusers_folders.py), checked against diffusers' own pipeline: its text encoding, one transformer step,
and full sampling."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from cli_helpers import run_cli

from vdistill.backbones.hunyuan import HunyuanVideoBackbone
from vdistill.backbones.io import load_backbone
from vdistill.backbones.student import make_student
from vdistill.config import to_config
from vdistill.errors import UserError
from vdistill.sampling.sampler import sample_latents

FRAMES, SIZE, TEXT_LEN = 5, 32, 16  # latents [B, 4, 2, 4, 4]
PROMPTS = ["a red ball runs on the grass", "", "the dog jumps over a blue ball"]


@pytest.fixture(scope="module")
def teacher(hunyuan_pipeline_dir) -> HunyuanVideoBackbone:
    return HunyuanVideoBackbone(str(hunyuan_pipeline_dir), max_text_length=TEXT_LEN)


@pytest.fixture(scope="module")
def pipe(teacher):
    from diffusers import FlowMatchEulerDiscreteScheduler, HunyuanVideoPipeline

    scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(teacher._init_args["path"], subfolder="scheduler")
    pipe = HunyuanVideoPipeline(
        text_encoder=teacher.text_encoder, tokenizer=teacher.tokenizer, transformer=teacher.denoiser, vae=teacher.vae,
        scheduler=scheduler, text_encoder_2=teacher.text_encoder_2, tokenizer_2=teacher.tokenizer_2)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _noise(model: HunyuanVideoBackbone, batch: int = 2, seed: int = 0) -> torch.Tensor:
    shape = model.latent_shape(FRAMES, SIZE, SIZE)
    return torch.randn(batch, *shape, generator=torch.Generator().manual_seed(seed))


def test_loads_parts_schedule_and_defaults(teacher, hunyuan_pipeline_dir):
    assert teacher.schedule.kind == "flow" and teacher.schedule.shift == 7.0  # from scheduler_config.json
    d = teacher.defaults
    assert (d.steps, d.cfg, d.num_frames, d.height, d.width, d.fps) == (50, 1.0, 129, 720, 1280, 24)
    assert teacher.embedded_guidance == 6.0 and teacher.embeds_guidance
    assert teacher.latent_shape(129, 720, 1280) == (4, 33, 90, 160)
    with pytest.raises(UserError, match=r"1 \+ 4k frames \(e.g. 129\), got 16"):
        teacher.latent_shape(16, 720, 1280)
    with pytest.raises(UserError, match="multiple of 16 pixels, got 40 x 32"):
        teacher.latent_shape(5, 40, 32)
    for part in (teacher.vae, teacher.text_encoder, teacher.text_encoder_2):
        assert all(not p.requires_grad for p in part.parameters()) and not part.training
    assert not any(k.startswith(("text_encoder", "vae")) for k in teacher.export_state_dict())
    assert to_config(teacher)["init_args"]["path"] == str(hunyuan_pipeline_dir)


def test_text_matches_the_pipeline(teacher, pipe):
    text = teacher.encode_text(PROMPTS)
    states, pooled, mask = pipe.encode_prompt(PROMPTS, max_sequence_length=TEXT_LEN, device=torch.device("cpu"))
    assert text["states"].shape == (3, TEXT_LEN, 16) and text["pooled"].shape == (3, 32)
    torch.testing.assert_close(text["states"], states)
    torch.testing.assert_close(text["mask"], mask.long())
    torch.testing.assert_close(text["pooled"], pooled)
    # the template's crop ends where the prompt starts: the prompt's words and <|eot_id|> are what the mask keeps
    assert text["mask"].sum(1).tolist() == [len(p.split()) + 1 for p in PROMPTS]
    assert not torch.allclose(text["states"][0], text["states"][2])


def test_one_step_is_the_transformer_at_the_embedded_scale(teacher, pipe):
    x, t = _noise(teacher), torch.tensor([0.9, 0.3])
    states, pooled, mask = pipe.encode_prompt(PROMPTS[::2], max_sequence_length=TEXT_LEN, device=torch.device("cpu"))
    text = teacher.encode_text(PROMPTS[::2])

    def transformer(scales: list[float]) -> torch.Tensor:  # as HunyuanVideoPipeline.__call__ calls it
        return teacher.denoiser(hidden_states=x, timestep=t * 1000, encoder_hidden_states=states,
                                encoder_attention_mask=mask.float(), pooled_projections=pooled,
                                guidance=torch.tensor(scales) * 1000.0, return_dict=False)[0]

    with torch.no_grad():
        default = teacher(x, t, text)
        torch.testing.assert_close(default, transformer([6.0, 6.0]))
        mixed = teacher(x, t, text, guidance=torch.tensor([3.0, 9.0]))
        torch.testing.assert_close(mixed, transformer([3.0, 9.0]))
    assert not torch.allclose(mixed, default, atol=1e-4)  # the scale reaches the network


@pytest.mark.parametrize("guidance, true_cfg", [(None, 1.0), (3.5, 1.0), (6.0, 4.0)])
def test_sampling_matches_the_pipeline(guidance, true_cfg, teacher, pipe):
    """Euler sampling == HunyuanVideoPipeline (FlowMatchEuler, shift 7): its default embedded scale 6.0, another
    embedded scale, and true CFG against the empty prompt; latents and decoded videos."""
    noise = _noise(teacher, batch=1, seed=3)
    kwargs = {} if guidance is None else {"guidance_scale": guidance}
    if true_cfg != 1.0:
        kwargs.update(negative_prompt="", true_cfg_scale=true_cfg)
    run = {"height": SIZE, "width": SIZE, "num_frames": FRAMES, "num_inference_steps": 3,
           "max_sequence_length": TEXT_LEN, **kwargs}
    ref = pipe("a red ball", latents=noise.clone(), output_type="latent", **run).frames
    res = sample_latents(teacher, noise, teacher.encode_text(["a red ball"]), steps=3, guidance=guidance,
                         uncond=teacher.encode_text([""]) if true_cfg != 1.0 else None, cfg=true_cfg)
    torch.testing.assert_close(res.latents, ref, atol=1e-4, rtol=1e-4)
    video = pipe("a red ball", latents=noise.clone(), output_type="pt", **run).frames
    torch.testing.assert_close(teacher.decode_latents(res.latents), video.float(), atol=1e-4, rtol=1e-3)


def test_encode_decode(teacher):
    video = torch.rand(1, FRAMES, 3, SIZE, SIZE)
    z = teacher.encode_video(video)
    assert z.shape == (1, *teacher.latent_shape(FRAMES, SIZE, SIZE))
    raw = teacher.vae.encode(video.transpose(1, 2) * 2 - 1).latent_dist.mean
    torch.testing.assert_close(z, raw * 0.476986)  # the released VAE's scaling_factor
    z = z.clone().requires_grad_(True)
    pixels = teacher.decode_latents(z)
    assert pixels.shape == video.shape and pixels.min() >= 0 and pixels.max() <= 1
    pixels.mean().backward()
    assert z.grad is not None and torch.isfinite(z.grad).all()


def test_feature_blocks_read_as_frames(teacher):
    blocks = teacher.feature_blocks()
    assert len(blocks) == 2 and teacher.feature_channels() == [24, 24]  # one dual- and one single-stream block
    x, seen = _noise(teacher), []
    hooks = [b.register_forward_hook(lambda _m, _i, out: seen.append(teacher.feature_frames(out, x))) for b in blocks]
    try:
        with torch.no_grad():
            teacher(x, torch.tensor([0.5, 0.5]), teacher.encode_text(["a cat", "a dog"]))
    finally:
        for h in hooks:
            h.remove()
    assert [f.shape for f in seen] == [(2, 2, 24, 2, 2)] * 2  # [B, T', D, H/16, W/16]


def test_lcm_guidance_projection_on_top_of_the_native_input(hunyuan_pipeline_dir):
    model = HunyuanVideoBackbone(str(hunyuan_pipeline_dir), max_text_length=TEXT_LEN)
    x, t, text = _noise(model), torch.tensor([0.5, 0.5]), model.encode_text(["a cat", "a cat"])
    w = torch.tensor([4.0, 4.0])
    with torch.no_grad():
        native = model(x, t, text, guidance=w)
        proj = model.enable_guidance_embedding()
        assert proj.out_features == 24
        torch.testing.assert_close(model(x, t, text, guidance=w), native)  # zero-initialised: the teacher at w
        torch.nn.init.normal_(proj.weight, std=0.5)
        assert not torch.allclose(model(x, t, text, guidance=w), native, atol=1e-4)
        torch.testing.assert_close(model(x, t, text), model.denoise(x, t * 1000, text))  # no scale: 6.0, no LCM


@pytest.mark.parametrize("targets", [None, ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj",
                                             "add_v_proj", "to_add_out", "proj_mlp", "proj_out"]])
def test_lora_student(teacher, targets):
    """The family default (every Linear of the dual- and single-stream blocks) and explicit targets."""
    student = make_student(teacher, "lora", lora_rank=4, target_modules=targets)
    if targets is None:
        lora_layers = {n.rsplit(".lora_A", 1)[0] for n, _ in student.named_parameters() if ".lora_A" in n}
        linears = {f"denoiser.{n}" for n, m in teacher.denoiser.named_modules() if isinstance(m, torch.nn.Linear)
                   and n.startswith(("transformer_blocks.", "single_transformer_blocks."))}
        assert lora_layers == linears
    assert student.text_encoder is teacher.text_encoder and student.text_encoder_2 is teacher.text_encoder_2
    trainable = [n for n, p in student.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert any(n.startswith("denoiser.single_transformer_blocks.0.proj_mlp.") for n in trainable)
    x, t, text = _noise(teacher), torch.tensor([0.7, 0.2]), teacher.encode_text(["a cat", "a dog"])
    with torch.no_grad():
        torch.testing.assert_close(student(x, t, text), teacher(x, t, text))  # B is zero-initialised
    student(x, t, text).square().mean().backward()
    grads = [p.grad for n, p in student.named_parameters() if "lora_B" in n]  # A's gradient is 0 while B is
    assert grads and all(g is not None for g in grads) and all(g.abs().sum() > 0 for g in grads)


def test_gradient_checkpointing_gives_the_same_gradients(hunyuan_pipeline_dir):
    model = HunyuanVideoBackbone(str(hunyuan_pipeline_dir), max_text_length=TEXT_LEN)
    x, t, text = _noise(model), torch.tensor([0.6, 0.4]), model.encode_text(["a cat", "a dog"])

    def grads() -> dict[str, torch.Tensor]:
        model.denoiser.zero_grad()
        model(x, t, text).square().mean().backward()
        return {n: p.grad.clone() for n, p in model.denoiser.named_parameters() if p.grad is not None}

    plain = grads()
    model.enable_gradient_checkpointing()
    assert model.denoiser.gradient_checkpointing
    torch.testing.assert_close(grads(), plain)
    assert HunyuanVideoBackbone(str(hunyuan_pipeline_dir), gradient_checkpointing=True,
                                vae_tiling=True).vae.use_tiling


def test_sample_a_pipeline_folder(hunyuan_pipeline_dir, tmp_path, capsys):
    assert isinstance(load_backbone(hunyuan_pipeline_dir), HunyuanVideoBackbone)  # picked by model_index.json
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat runs on the grass\na red ball\n")
    videos = {}
    for name, extra in (("default", []), ("w3", ["--guidance", "3"])):
        out = tmp_path / name
        code, stdout, err = run_cli(["sample", "--model", str(hunyuan_pipeline_dir), "--prompts", str(prompts),
                                     "--out", str(out), "--steps", "2", "--mp4", "1", "--frames", "5", "--height",
                                     "32", "--width", "48", *extra], capsys)
        assert code == 0, err
        assert "2 videos of 5 x 32 x 48" in stdout and "cfg 1.0, float32)" in stdout  # true CFG off by default
        videos[name] = np.load(out / "videos.npz")["videos"]
        assert videos[name].shape == (2, 5, 32, 48, 3) and len(list((out / "mp4").glob("*.mp4"))) == 1
    assert not np.array_equal(videos["default"], videos["w3"])  # --guidance is the embedded scale


def test_broken_folders_are_user_errors(hunyuan_pipeline_dir, tmp_path):
    partial = tmp_path / "partial"
    shutil.copytree(hunyuan_pipeline_dir, partial)
    shutil.rmtree(partial / "text_encoder_2")
    with pytest.raises(UserError, match=r"HunyuanVideo model folder .* lacks the sub-folder\(s\) text_encoder_2"):
        load_backbone(partial)
    index = json.loads((partial / "model_index.json").read_text())
    index["text_encoder"] = ["transformers", "T5EncoderModel"]
    (partial / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(UserError, match=r"'text_encoder' is T5EncoderModel \(expected LlamaModel\)"):
        load_backbone(partial)
