"""``vdistill export`` of a student of a diffusers teacher is a diffusers pipeline: ``from_pretrained`` and the plain
call ``pipe(prompt, num_inference_steps=<steps>, guidance_scale=1.0)`` give what ``vdistill sample`` gives (same
prompt and seed), and a LoRA student's ``pytorch_lora_weights.safetensors`` on the teacher's pipeline gives the
merged student."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from cli_helpers import run_cli

from vdistill.backbones.io import load_backbone
from vdistill.backbones.student import StudentConfig, make_student, set_consistency_sampling
from vdistill.diffusion.export_scheduler import export_scheduler
from vdistill.diffusion.schedules import DDPMSchedule, FlowSchedule, timesteps_at
from vdistill.modules.distill import Distillation
from vdistill.objectives.consistency import ConsistencyDistillation
from vdistill.objectives.trajectory import TrajectoryGuidance
from vdistill.sampling.consistency import sample_consistency, seeded_noise
from vdistill.sampling.generate import generate
from vdistill.sampling.sampler import initial_noise, sample_latents

PROMPT, SEED = "a red ball runs on the grass", 7
#: frames, height, width of the tiny videos (Wan: 1 + 4k frames)
SIZE = {"wan": (5, 32, 32), "modelscope": (2, 32, 32)}


@pytest.fixture
def teacher(request):
    """The tiny teacher of ``request.param`` (``wan`` / ``modelscope``), from its pipeline-written folder."""
    if request.param == "wan":
        from vdistill.backbones.wan import WanBackbone

        return WanBackbone(str(request.getfixturevalue("wan_pipeline_dir")))
    from vdistill.backbones.modelscope import ModelScopeBackbone

    return ModelScopeBackbone(str(request.getfixturevalue("modelscope_pipeline_dir")))


def family(teacher) -> str:
    return "wan" if type(teacher).__name__ == "WanBackbone" else "modelscope"


def checkpoint(teacher, objective, path: Path, student: StudentConfig = StudentConfig(), keys=None) -> Path:
    """A checkpoint written as the distillation module writes one (``on_save_checkpoint``) after a random
    training-like perturbation of the student's trainable weights."""
    module = Distillation(teacher, [objective], student=student)
    if keys is not None:
        module.bind_key_timesteps(keys)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in module.student.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=gen) * 0.03)
    ckpt = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(ckpt)
    torch.save(ckpt, path)
    return path


def export(ckpt: Path, out: Path, capsys) -> str:
    code, stdout, err = run_cli(["export", "--ckpt", str(ckpt), "--out", str(out)], capsys)
    assert code == 0, err
    return stdout


def pipeline_call(out: Path, fam: str, steps: int, output_type: str, own_generator: bool = False):
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(str(out))
    frames, height, width = SIZE[fam]
    generator = torch.Generator().manual_seed(SEED)
    if own_generator:  # WanPipeline does not pass its generator to scheduler.step (README)
        pipe.scheduler.generator = generator
    return pipe(PROMPT, num_inference_steps=steps, guidance_scale=1.0, num_frames=frames, height=height,
                width=width, generator=generator, output_type=output_type).frames


def assert_same_latents(got: torch.Tensor, want: torch.Tensor) -> None:
    """Equal within 1e-4 of the latents' scale (the tiny random networks give latents of size ~50)."""
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4 * max(1.0, want.abs().max().item()))


# -- the scheduler: stock where a config visits the student's times ------------------------------------------
@pytest.mark.parametrize("shift", [1.0, 3.0, 5.0])
@pytest.mark.parametrize("indices", [[0, 50], [0, 25, 50], [0, 10, 20, 30, 40, 50], [0, 5, 20, 50]])
def test_flow_key_timesteps_map_to_a_stock_euler_scheduler_when_one_exists(shift, indices):
    from diffusers import FlowMatchEulerDiscreteScheduler

    keys = timesteps_at(FlowSchedule(shift).sampling_timesteps(50), indices)
    sched, stock = export_scheduler(FlowSchedule(shift), keys.tolist())
    even = len({b - a for a, b in zip(indices, indices[1:])}) == 1
    assert stock == even and (type(sched) is FlowMatchEulerDiscreteScheduler) == even
    sched.set_timesteps(len(keys) - 1)
    torch.testing.assert_close(sched.sigmas, keys, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="num_inference_steps") if not stock else _nothing():
        sched.set_timesteps(len(keys))


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


@pytest.mark.parametrize("indices", [[0, 50], [0, 25, 50], [0, 10, 20, 30, 40, 50], [0, 5, 20, 50]])
def test_ddpm_key_timesteps_map_to_stock_ddim_when_it_steps_through_them(indices):
    schedule = DDPMSchedule()
    keys = timesteps_at(schedule.sampling_timesteps(50), indices)
    sched, stock = export_scheduler(schedule, keys.tolist())
    assert stock == (indices != [0, 5, 20, 50]), type(sched).__name__
    sched.set_timesteps(len(keys) - 1)
    assert sched.timesteps.tolist() == keys[:-1].long().tolist()
    x, eps = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    for i, t in enumerate(sched.timesteps):  # each step is vdistill's DDIM step to the next key timestep
        want = schedule.step(eps, x, keys[i].reshape(1), keys[i + 1].reshape(1))
        torch.testing.assert_close(sched.step(eps, t, x).prev_sample, want, rtol=1e-5, atol=1e-5)


def test_own_schedulers_reload_from_their_config_without_unknown_keys(tmp_path, caplog):
    from vdistill.diffusion import pipeline_schedulers as own

    sched, stock = export_scheduler(FlowSchedule(3.0), [], {"steps": 4, "original_steps": 50, "guidance": 7.5})
    assert not stock and isinstance(sched, own.FlowConsistencyScheduler)
    sched.save_pretrained(str(tmp_path))
    with caplog.at_level("WARNING"):
        again = own.FlowConsistencyScheduler.from_pretrained(str(tmp_path))
    assert "not expected" not in caplog.text
    assert again.config.consistency_sigmas == sched.config.consistency_sigmas and again.config.shift == 1.0


# -- a fixed embedded guidance scale folded into a bias ------------------------------------------------------
@pytest.mark.parametrize("teacher", ["wan", "modelscope"], indirect=True)
def test_guidance_fold_without_hook_equals_the_student_with_its_hook(teacher, tmp_path):
    from vdistill.backbones.pipeline_export import guidance_fold, write_denoiser

    student = make_student(teacher, guidance_embedding=True).eval()
    torch.nn.init.normal_(student.guidance_proj.weight, std=0.2)
    set_consistency_sampling(student, guidance=6.5)
    write_denoiser(student, tmp_path / "denoiser")
    plain = type(student.denoiser).from_pretrained(str(tmp_path / "denoiser")).eval()
    name, delta = guidance_fold(student)
    assert delta.abs().max() > 1e-2  # the fold is not a no-op
    frames, height, width = SIZE[family(teacher)]
    x = torch.randn(1, *student.latent_shape(frames, height, width))
    t = student.schedule.sampling_timesteps(4)[1].reshape(1)
    text = student.encode_text([PROMPT])
    with torch.no_grad():
        want = student(x, t, text, torch.tensor([6.5]))
        student.denoiser, original = plain, student.denoiser  # same family code, no hook on the exported network
        try:
            got = student.denoise(x, student.schedule.model_timestep(t), text)
        finally:
            student.denoiser = original
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


# -- AccVideo-style students: Euler / DDIM through the key timesteps ------------------------------------------
@pytest.mark.parametrize("indices", [[0, 10, 20, 30, 40, 50], [0, 5, 20, 50]], ids=["even", "uneven"])
@pytest.mark.parametrize("teacher", ["wan", "modelscope"], indirect=True)
def test_trajectory_student_pipeline_equals_vdistill_sample(teacher, indices, tmp_path, capsys):
    fam = family(teacher)
    keys = timesteps_at(teacher.schedule.sampling_timesteps(50), indices).tolist()
    ckpt = checkpoint(teacher, TrajectoryGuidance(), tmp_path / "student.ckpt", keys=keys)
    out = tmp_path / "export"
    line = export(ckpt, out, capsys)
    stock = indices == [0, 10, 20, 30, 40, 50]
    scheduler = ("FlowMatchEulerDiscreteScheduler" if fam == "wan" else "DDIMScheduler") if stock else \
        ("KeyTimestepEulerScheduler" if fam == "wan" else "KeyTimestepDDIMScheduler")
    assert f"with {scheduler} (" in line and "hard-linked" in line and line.count("\n") == 1
    index = json.loads((out / "model_index.json").read_text())
    assert index["_class_name"] == ("WanPipeline" if fam == "wan" else "TextToVideoSDPipeline")
    assert index["scheduler"] == ["diffusers" if stock else "vdistill.diffusion.pipeline_schedulers", scheduler]
    vae = next((out / "vae").glob("*.safetensors"))
    assert vae.stat().st_ino == (Path(teacher._init_args["path"]) / "vae" / vae.name).stat().st_ino

    student = load_backbone(out)  # what `vdistill sample --model DIR` samples
    steps = len(keys) - 1
    frames, height, width = SIZE[fam]
    text = student.encode_text([PROMPT])
    want = sample_latents(student, initial_noise(student.latent_shape(frames, height, width), [SEED]), text).latents
    assert_same_latents(pipeline_call(out, fam, steps, "latent"), want)
    video = generate(student, [PROMPT], seed=SEED, num_frames=frames, height=height, width=width,
                     progress=False).videos
    torch.testing.assert_close(pipeline_call(out, fam, steps, "pt"), video, rtol=0, atol=1e-4)


def test_custom_scheduler_loads_once_vdistill_is_imported(wan_pipeline_dir, tmp_path, capsys):
    from vdistill.backbones.wan import WanBackbone

    teacher = WanBackbone(str(wan_pipeline_dir))
    keys = timesteps_at(teacher.schedule.sampling_timesteps(50), [0, 5, 20, 50]).tolist()
    out = tmp_path / "export"
    export(checkpoint(teacher, TrajectoryGuidance(), tmp_path / "s.ckpt", keys=keys), out, capsys)
    code = ("import sys\nfrom diffusers import DiffusionPipeline\n"
            "try:\n    DiffusionPipeline.from_pretrained(sys.argv[1])\n"
            "except ValueError as err:\n    print('REFUSED', err)\n"
            "import vdistill.diffusion.pipeline_schedulers\n"
            "print('LOADED', type(DiffusionPipeline.from_pretrained(sys.argv[1]).scheduler).__name__)\n")
    run = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True, text=True, timeout=120)
    assert "REFUSED" in run.stdout and "import vdistill.diffusion.pipeline_schedulers" in run.stdout, run.stderr
    assert "LOADED KeyTimestepEulerScheduler" in run.stdout, run.stderr


def test_export_copies_the_teacher_parts_when_links_fail(wan_pipeline_dir, tmp_path, capsys, monkeypatch):
    from vdistill.backbones.wan import WanBackbone

    teacher = WanBackbone(str(wan_pipeline_dir))
    keys = timesteps_at(teacher.schedule.sampling_timesteps(50), [0, 25, 50]).tolist()
    ckpt = checkpoint(teacher, TrajectoryGuidance(), tmp_path / "s.ckpt", keys=keys)
    out = tmp_path / "export"
    assert "hard-linked from" in export(ckpt, out, capsys)

    def no_links(*args, **kwargs):
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", no_links)
    line = export(ckpt, out, capsys)  # replaces the earlier pipeline export as a whole
    assert "tokenizer/ copied from" in line
    for part in ("vae", "text_encoder", "tokenizer"):
        for theirs in (wan_pipeline_dir / part).iterdir():
            mine = out / part / theirs.name
            assert mine.read_bytes() == theirs.read_bytes() and mine.stat().st_ino != theirs.stat().st_ino


def test_export_refuses_to_replace_a_teacher_folder(wan_pipeline_dir, tmp_path, capsys):
    import shutil

    teacher = shutil.copytree(wan_pipeline_dir, tmp_path / "teacher")
    before = sorted(p.name for p in teacher.iterdir())
    code, _, err = run_cli(["export", "--ckpt", "toy-flow", "--out", str(teacher)], capsys)
    assert code == 2 and "not a vdistill export (no backbone.yaml)" in err and err.count("\n") == 1
    assert sorted(p.name for p in teacher.iterdir()) == before


def test_toy_export_has_no_pipeline(tmp_path, capsys):
    code, out, err = run_cli(["export", "--ckpt", "toy-flow", "--out", str(tmp_path / "toy")], capsys)
    assert code == 0, err
    assert "vdistill format only" in out
    assert sorted(p.name for p in (tmp_path / "toy").iterdir()) == ["backbone.yaml", "model.safetensors"]


# -- consistency students (T2V-Turbo style), LoRA: the diffusers adapter on the teacher's pipeline ----------------
def _denoiser_outputs(pipe, fam: str) -> torch.Tensor:
    net = pipe.transformer if fam == "wan" else pipe.unet
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 2, 4, 4, generator=gen)
    width = net.config.text_dim if fam == "wan" else net.config.cross_attention_dim
    text = torch.randn(1, 8, width, generator=gen)
    with torch.no_grad():
        return torch.cat([net(x, torch.tensor([t]), encoder_hidden_states=text, return_dict=False)[0].flatten()
                          for t in (999.0, 500.0, 19.0)])


def consistency_call(pipe, fam: str, steps: int, frames: int) -> torch.Tensor:
    """The README's call for a consistency student: a CPU generator seeded with SEED (Wan: also given to the
    scheduler, WanPipeline does not pass it to scheduler.step)."""
    _, height, width = SIZE[fam]
    generator = torch.Generator().manual_seed(SEED)
    if fam == "wan":
        pipe.scheduler.generator = generator
    return pipe(PROMPT, num_inference_steps=steps, guidance_scale=1.0, num_frames=frames, height=height, width=width,
                generator=generator, output_type="latent").frames


@pytest.mark.filterwarnings("ignore:`lora_bias=True` was passed")  # ModelScope's attention projections: no bias
@pytest.mark.parametrize("teacher", ["wan", "modelscope"], indirect=True)
def test_lora_consistency_student_pipeline_and_adapter(teacher, tmp_path, capsys):
    from diffusers import DiffusionPipeline

    from vdistill.backbones.lora_export import load_lora_weights

    fam = family(teacher)
    ckpt = checkpoint(teacher, ConsistencyDistillation(guidance=6.0), tmp_path / "adapter.ckpt",
                      student=StudentConfig(mode="lora", lora_rank=4, lora_alpha=8))
    assert torch.load(ckpt, weights_only=True)["vdistill_teacher"] is not None  # adapter-only
    out = tmp_path / "export"
    line = export(ckpt, out, capsys)
    assert "LoRA pytorch_lora_weights.safetensors" in line
    assert ("LCMScheduler (stock" if fam == "modelscope" else "FlowConsistencyScheduler (vdistill's own") in line

    student = load_backbone(out)  # `vdistill sample --model DIR`: its own 4 steps and embedded guidance 6.0
    frames = 5 if fam == "wan" else SIZE["modelscope"][0]
    _, height, width = SIZE[fam]
    noise, gens = seeded_noise(student.latent_shape(frames, height, width), [SEED])
    want = sample_consistency(student, noise, student.encode_text([PROMPT]), generators=gens).latents
    exported = DiffusionPipeline.from_pretrained(str(out))
    assert_same_latents(consistency_call(exported, fam, student.defaults.steps, frames), want)

    pipe = DiffusionPipeline.from_pretrained(teacher._init_args["path"])  # the teacher's pipeline + the adapter
    before = _denoiser_outputs(pipe, fam)
    if fam == "modelscope":  # diffusers 0.42: UNet3DConditionModel has no load_lora_adapter (README)
        with pytest.raises(AttributeError, match="load_lora_adapter"):
            pipe.load_lora_weights(str(out))
        load_lora_weights(pipe, out)
    else:
        pipe.load_lora_weights(str(out))
    merged = _denoiser_outputs(exported, fam)
    torch.testing.assert_close(_denoiser_outputs(pipe, fam), merged, rtol=0, atol=1e-5)
    assert not torch.allclose(before, merged, atol=1e-3)  # the adapter changes the teacher
    pipe.scheduler = type(exported.scheduler).from_pretrained(str(out), subfolder="scheduler")
    assert_same_latents(consistency_call(pipe, fam, student.defaults.steps, frames), want)


def test_modelscope_consistency_noise_layout(modelscope_pipeline_dir, tmp_path):
    """TextToVideoSDPipeline draws LCMScheduler's per-step noise frames first ([B*T, C, H, W]); ModelScope's
    ``step_noise`` does too, so a consistency student with several frames samples the pipeline's video."""
    from vdistill.backbones.export import write_export
    from vdistill.backbones.modelscope import ModelScopeBackbone

    student = make_student(ModelScopeBackbone(str(modelscope_pipeline_dir)), guidance_embedding=True).eval()
    set_consistency_sampling(student)
    write_export(student, tmp_path / "export")
    frames, height, width = SIZE["modelscope"]
    noise, gens = seeded_noise(student.latent_shape(frames, height, width), [SEED])
    want = sample_consistency(student, noise, student.encode_text([PROMPT]), generators=gens).latents
    assert_same_latents(pipeline_call(tmp_path / "export", "modelscope", 4, "latent"), want)


@pytest.mark.filterwarnings("ignore:`lora_bias=True` was passed")
@pytest.mark.parametrize("teacher", ["wan", "modelscope"], indirect=True)
def test_export_callback_of_a_live_lora_student_equals_the_checkpoint_export(teacher, tmp_path, capsys):
    from types import SimpleNamespace

    from safetensors.torch import load_file

    from vdistill.callbacks.export import ExportBackbone

    module = Distillation(teacher, [ConsistencyDistillation()], student=StudentConfig(mode="lora", lora_rank=4))
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in module.student.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=gen) * 0.03)
    callback, trainer = ExportBackbone(str(tmp_path / "live"), ema=False), SimpleNamespace(is_global_zero=True)
    callback.setup(trainer, module, "fit")
    callback.on_train_end(trainer, module)  # the student in memory: adapters not merged
    assert "LoRA pytorch_lora_weights.safetensors" in capsys.readouterr().out
    ckpt = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(ckpt)
    torch.save(ckpt, tmp_path / "adapter.ckpt")
    export(tmp_path / "adapter.ckpt", tmp_path / "ckpt", capsys)
    sub = "transformer" if family(teacher) == "wan" else "unet"
    for name in (f"{sub}/diffusion_pytorch_model.safetensors", "pytorch_lora_weights.safetensors"):
        live, merged = load_file(str(tmp_path / "live" / name)), load_file(str(tmp_path / "ckpt" / name))
        assert live.keys() == merged.keys()
        for key in live:
            torch.testing.assert_close(live[key], merged[key], rtol=0, atol=1e-6)
