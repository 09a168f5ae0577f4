"""A diffusers pipeline folder is a model name everywhere: ``load_backbone``, ``vdistill sample``, ``synth``,
``bench``, ``fit``'s teacher and the ``VideoSamples`` callback, on the tiny folders written by ``WanPipeline`` /
``TextToVideoSDPipeline.save_pretrained`` (tests/helpers/diffusers_folders.py); and every broken teacher folder is one
line, exit 2."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from cli_helpers import run_cli

from vdistill.backbones.io import load_backbone
from vdistill.backbones.modelscope import ModelScopeBackbone
from vdistill.backbones.wan import WanBackbone
from vdistill.callbacks import VideoSamples
from vdistill.data.trajectories import TrajectoryDataset
from vdistill.errors import UserError

PROMPTS = ["a cat runs on the grass", "a red ball"]
#: frames x height x width per family: Wan 1 + 4k frames and multiples of 16 pixels, ModelScope multiples of 8
SIZES = {"wan": (5, 32, 48), "modelscope": (3, 16, 32)}


@pytest.fixture
def folders(wan_pipeline_dir, modelscope_pipeline_dir) -> dict[str, Path]:
    return {"wan": wan_pipeline_dir, "modelscope": modelscope_pipeline_dir}


@pytest.fixture
def prompt_file(tmp_path) -> Path:
    path = tmp_path / "prompts.txt"
    path.write_text("\n".join(PROMPTS) + "\n")
    return path


def size_flags(family: str) -> list[str]:
    frames, height, width = SIZES[family]
    return ["--frames", str(frames), "--height", str(height), "--width", str(width)]


def error_line(code: int, err: str) -> str:
    """The one error line of a refused command (the libraries' weight-loading progress bars may precede it)."""
    lines = [ln for ln in err.splitlines() if ln.strip() and "Loading weights" not in ln]
    assert code == 2 and "Traceback" not in err and len(lines) == 1, err
    assert lines[0].startswith("vdistill: error: ")
    return lines[0]


# -- load_backbone --------------------------------------------------------------------------------------------
def test_model_index_picks_the_backbone_and_dtype(folders):
    wan = load_backbone(folders["wan"])
    assert isinstance(wan, WanBackbone) and wan.denoiser.dtype == torch.float32
    assert wan.defaults.num_frames == 81 and (wan.defaults.height, wan.defaults.width) == (480, 832)
    assert wan._init_args["path"] == str(folders["wan"].resolve())
    scope = load_backbone(folders["modelscope"], dtype="bf16")
    assert isinstance(scope, ModelScopeBackbone)
    assert scope.denoiser.dtype == torch.bfloat16 and scope.text_encoder.dtype == torch.bfloat16
    assert scope._init_args["torch_dtype"] == "bfloat16"
    wan16 = load_backbone(folders["wan"], dtype=torch.bfloat16)
    assert wan16.denoiser.dtype == torch.bfloat16 and wan16.denoiser.blocks[0].attn1.to_q.weight.dtype == torch.bfloat16
    # diffusers keeps Wan's time embedding in float32 at any torch_dtype, and the Wan VAE is float32 by default
    assert wan16.denoiser.condition_embedder.time_embedder.linear_1.weight.dtype == torch.float32
    assert next(wan16.vae.parameters()).dtype == torch.float32
    with pytest.raises(UserError, match="unknown dtype 'int3'; valid choices: .*bfloat16"):
        load_backbone(folders["wan"], dtype="int3")


def _tampered_index(src: Path, dst: Path, **changes) -> Path:
    shutil.copytree(src, dst)
    index = json.loads((dst / "model_index.json").read_text())
    index.update(changes)
    (dst / "model_index.json").write_text(json.dumps(index))
    return dst


@pytest.mark.parametrize("changes, message", [
    ({"_class_name": "WanImageToVideoPipeline"}, r"pipeline class 'WanImageToVideoPipeline' in model_index.json is "
     r"not supported; supported: WanPipeline \(WanBackbone\), TextToVideoSDPipeline \(ModelScopeBackbone\)"),
    ({"transformer": [None, None]}, r"does not describe a WanPipeline that WanBackbone loads: no 'transformer' "
     r"component"),
    ({"vae": ["diffusers", "AutoencoderKL"], "text_encoder": ["transformers", "T5EncoderModel"]},
     r"'vae' is AutoencoderKL \(expected AutoencoderKLWan\); 'text_encoder' is T5EncoderModel \(expected "
     r"UMT5EncoderModel\)"),
    ({"transformer_2": ["diffusers", "WanTransformer3DModel"]}, r"'transformer_2' is a second expert transformer"),
])
def test_model_index_that_our_backbones_cannot_load(changes, message, wan_pipeline_dir, tmp_path):
    folder = _tampered_index(wan_pipeline_dir, tmp_path / "wan", **changes)
    with pytest.raises(UserError, match=message) as err:
        load_backbone(folder)
    assert f"diffusers folder {str(folder)!r}" in str(err.value)


def test_model_index_is_data_not_code(wan_pipeline_dir, tmp_path):
    folder = _tampered_index(wan_pipeline_dir, tmp_path / "wan", _class_name="os.system")
    with pytest.raises(UserError, match="pipeline class 'os.system' in model_index.json is not supported"):
        load_backbone(folder)
    (folder / "model_index.json").write_text("[1, 2]")
    with pytest.raises(UserError, match="must be a JSON object with _class_name, got a list"):
        load_backbone(folder)
    (folder / "model_index.json").write_text("{oops")
    with pytest.raises(UserError, match="model_index.json' is not valid JSON"):
        load_backbone(folder)
    (folder / "model_index.json").unlink()
    with pytest.raises(UserError, match="has neither model_index.json .* nor backbone.yaml"):
        load_backbone(folder)


# -- sample, synth, bench ------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["wan", "modelscope"])
def test_sample_a_folder_at_the_requested_size(family, folders, prompt_file, tmp_path, capsys):
    out = tmp_path / "s"
    code, stdout, err = run_cli(["sample", "--model", str(folders[family]), "--prompts", str(prompt_file), "--out",
                                 str(out), "--steps", "2", "--mp4", "1", *size_flags(family)], capsys)
    assert code == 0, err
    frames, height, width = SIZES[family]
    data = np.load(out / "videos.npz")
    assert data["videos"].shape == (2, frames, height, width, 3) and list(data["prompts"]) == PROMPTS
    assert f"2 videos of {frames} x {height} x {width}" in stdout and "2 steps" in stdout
    cfg = {"wan": 5.0, "modelscope": 9.0}[family]  # the teacher's own CFG scale when --cfg is not given
    assert f"cfg {cfg}, float32)" in stdout


def test_sample_dtype_and_sizes_are_checked(wan_pipeline_dir, prompt_file, tmp_path, capsys):
    base = ["sample", "--model", str(wan_pipeline_dir), "--prompts", str(prompt_file), "--out", str(tmp_path / "s"),
            "--steps", "1", "--mp4", "0"]
    code, stdout, err = run_cli([*base, *size_flags("wan"), "--dtype", "bfloat16"], capsys)
    assert code == 0 and "bfloat16)" in stdout, err
    line = error_line(*run_cli([*base, "--frames", "6", "--height", "32", "--width", "32"], capsys)[::2])
    assert "--frames/--height/--width 6 x 32 x 32 (frames x height x width): Wan videos have 1 + 4k frames" in line
    line = error_line(*run_cli([*base, "--frames", "5", "--height", "40", "--width", "32"], capsys)[::2])
    assert "Wan video size must be a multiple of 16 pixels, got 40 x 32" in line
    assert not (tmp_path / "s" / "mp4").exists()  # the refused runs left the first run's output as it was


@pytest.mark.parametrize("family", ["wan", "modelscope"])
def test_synth_a_folder_at_the_requested_size(family, folders, prompt_file, tmp_path, capsys):
    out = tmp_path / "d"
    code, _, err = run_cli(["synth", "--model", str(folders[family]), "--prompts", str(prompt_file), "--out",
                            str(out), "--steps", "2", "--key-indices", "0,1,2", "--dtype", "float32",
                            "--model-dtype", "bfloat16", *size_flags(family)], capsys)
    assert code == 0, err
    ds = TrajectoryDataset(out)
    settings = ds.manifest["settings"]
    assert settings["video_size"] == list(SIZES[family]) and settings["dtype"] == "float32"
    assert settings["teacher"]["init_args"]["torch_dtype"] == "bfloat16"  # the teacher's, not the storage dtype
    teacher = load_backbone(folders[family])
    assert len(ds) == 2 and ds[0]["latents"].shape == (3, *teacher.latent_shape(*SIZES[family]))
    assert ds[0]["latents"].dtype == torch.float32


def test_bench_row_with_a_folder(wan_pipeline_dir, modelscope_pipeline_dir, prompt_file, tmp_path, capsys):
    spec = {"out": str(tmp_path / "out"), "prompts": str(prompt_file), "mp4": 0, "frames": 5, "height": 32,
            "width": 32, "rows": [
                {"name": "wan", "model": str(wan_pipeline_dir), "steps": 1, "width": 48, "dtype": "bfloat16"},
                {"name": "scope", "model": str(modelscope_pipeline_dir), "steps": 1, "frames": 2, "height": 16}]}
    (tmp_path / "rows.yaml").write_text(yaml.safe_dump(spec))
    code, stdout, err = run_cli(["bench", str(tmp_path / "rows.yaml")], capsys)
    assert code == 0, err
    shapes = {row: np.load(tmp_path / "out" / "samples" / row / "videos.npz")["videos"].shape
              for row in ("wan", "scope")}
    assert shapes == {"wan": (2, 5, 32, 48, 3), "scope": (2, 2, 16, 32, 3)}  # row keys beat the file's
    spec["rows"][0]["frames"] = 4
    (tmp_path / "rows.yaml").write_text(yaml.safe_dump(spec))
    line = error_line(*run_cli(["bench", str(tmp_path / "rows.yaml")], capsys)[::2])
    assert "video size of row 'wan' 4 x 32 x 48" in line and "1 + 4k frames" in line


# -- fit with a folder teacher, on a set synthesised from the same folder ---------------------------------------
@pytest.fixture(scope="module")
def wan_set(wan_pipeline_dir, tmp_path_factory) -> Path:
    """Two trajectories of the tiny Wan folder, key points 0, 1, 2 of 2 steps, 5 x 32 x 32 videos."""
    from vdistill.commands.synth import run

    out = tmp_path_factory.mktemp("wan_set") / "d"
    prompts = out.parent / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    run(["--model", str(wan_pipeline_dir), "--prompts", str(prompts), "--out", str(out), "--steps", "2",
         "--key-indices", "0,1,2", "--dtype", "float32", "--frames", "5", "--height", "32", "--width", "32"])
    return out


def fit_config(teacher: object, data: Path, root: Path, callbacks: list | None = None) -> dict:
    return {
        "seed_everything": 0,
        "trainer": {"accelerator": "cpu", "devices": 1, "max_steps": 2, "logger": False,
                    "enable_progress_bar": False, "enable_model_summary": False, "default_root_dir": str(root),
                    "callbacks": callbacks or []},
        "model": {"class_path": "Distillation", "init_args": {
            "teacher": teacher, "objectives": [{"class_path": "TrajectoryGuidance"}], "lr": 1e-3}},
        "data": {"class_path": "TrajectoryData", "init_args": {"root": str(data), "batch_size": 2,
                                                                "dtype": "float32"}},
    }


def test_fit_with_a_folder_teacher_on_its_own_synth_set(wan_pipeline_dir, wan_set, tmp_path, capsys):
    callbacks = [
        {"class_path": "ModelCheckpoint", "init_args": {"dirpath": str(tmp_path / "ckpt"), "save_last": True}},
        {"class_path": "VideoSamples", "init_args": {"every_n_steps": 2, "prompts": ["a cat"], "mp4": 0,
                                                     "num_frames": 5, "height": 32, "width": 16}},
    ]
    config = tmp_path / "fit.yaml"
    config.write_text(yaml.safe_dump(fit_config(str(wan_pipeline_dir), wan_set, tmp_path / "run", callbacks)))
    code, _, err = run_cli(["fit", "--config", str(config)], capsys)
    assert code == 0, err
    ckpt = torch.load(tmp_path / "ckpt" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 2 and ckpt["vdistill_backbone"]["class_path"].endswith("WanBackbone")
    teacher = load_backbone(wan_pipeline_dir)
    trained = ckpt["state_dict"]["student.denoiser.proj_out.weight"]
    assert not torch.equal(trained, teacher.denoiser.proj_out.weight)  # two steps of trajectory guidance
    student = load_backbone(tmp_path / "ckpt" / "last.ckpt")
    assert isinstance(student, WanBackbone) and student.defaults.steps == 2 and student.defaults.cfg == 1.0
    videos = np.load(tmp_path / "run" / "samples" / "step_000002" / "videos.npz")["videos"]
    assert videos.shape == (1, 5, 32, 16, 3)  # VideoSamples at its own size, not Wan's 81 x 480 x 832


@pytest.mark.parametrize("family, short", [("wan", "WanBackbone"), ("modelscope", "ModelScopeBackbone")])
def test_short_backbone_names_in_yaml(family, short, folders, wan_set, tmp_path, capsys):
    teacher = {"class_path": short, "init_args": {"path": str(folders[family]), "torch_dtype": "bfloat16"}}
    config = tmp_path / "fit.yaml"
    config.write_text(yaml.safe_dump(fit_config(teacher, wan_set, tmp_path / "run")))
    code, stdout, err = run_cli(["fit", "--config", str(config), "--print_config"], capsys)
    assert code == 0, err
    printed = yaml.safe_load(stdout)["model"]["init_args"]["teacher"]
    module = {"wan": "vdistill.backbones.wan", "modelscope": "vdistill.backbones.modelscope"}[family]
    assert printed["class_path"] == f"{module}.{short}" and printed["init_args"]["torch_dtype"] == "bfloat16"


def test_video_samples_size_is_checked():
    with pytest.raises(UserError, match=r"VideoSamples: num_frames, height and width must be integers >= 1 .* "
                                        r"got num_frames=0, width='32'"):
        VideoSamples(num_frames=0, height=32, width="32")


# -- broken teacher folders: one line, exit 2, through fit, sample and synth ---------------------------------
def _truncate(folder: Path) -> None:
    weights = folder / "transformer" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])


def _widen(folder: Path) -> None:
    config = json.loads((folder / "transformer" / "config.json").read_text())
    config["attention_head_dim"] = 16
    (folder / "transformer" / "config.json").write_text(json.dumps(config))


def _deepen(folder: Path) -> None:
    config = json.loads((folder / "transformer" / "config.json").read_text())
    config["num_layers"] = 2
    (folder / "transformer" / "config.json").write_text(json.dumps(config))


def _retype(folder: Path) -> None:
    index = json.loads((folder / "model_index.json").read_text())
    index["_class_name"] = "StableDiffusionPipeline"
    (folder / "model_index.json").write_text(json.dumps(index))


BROKEN = {
    "missing folder": (lambda f: shutil.rmtree(f), [r"model '{folder}' does not exist: expected a shipped model",
                                                    "a diffusers pipeline with model_index.json"]),
    "no vae": (lambda f: shutil.rmtree(f / "vae"), ["Wan model folder '{folder}' lacks the sub-folder(s) vae"]),
    "wrong pipeline": (_retype, ["diffusers folder '{folder}': pipeline class 'StableDiffusionPipeline'",
                                 "supported: WanPipeline (WanBackbone)"]),
    "truncated weights": (_truncate, ["'{folder}/transformer/diffusion_pytorch_model.safetensors' is truncated or "
                                      "corrupt", "download or save transformer/ again"]),
    "reshaped config": (_widen, ["the weights in '{folder}/transformer' do not match its config.json "
                                 "(WanTransformer3DModel): a tensor of another shape (", "in the file vs"]),
    "missing tensors": (_deepen, ["the weights in '{folder}/transformer' do not match its config.json",
                                  "27 tensors missing from the weights (blocks.1."]),
}


def _command(command: str, folder: Path, data: Path, tmp_path: Path) -> list[str]:
    if command == "fit":
        config = tmp_path / "fit.yaml"
        config.write_text(yaml.safe_dump(fit_config(str(folder), data, tmp_path / "run")))
        return ["fit", "--config", str(config)]
    flags = ["--prompts", str(tmp_path / "p.txt"), "--out", str(tmp_path / "out"), "--steps", "1",
             *size_flags("wan")]
    (tmp_path / "p.txt").write_text("a cat\n")
    return [command, "--model", str(folder), *flags, *(["--key-indices", "0,1"] if command == "synth" else [])]


@pytest.mark.parametrize("command", ["fit", "sample", "synth"])
@pytest.mark.parametrize("case", list(BROKEN))
def test_broken_teacher_folder_is_one_line(case, command, wan_pipeline_dir, wan_set, tmp_path, capsys):
    folder = (tmp_path / "wan").resolve()
    shutil.copytree(wan_pipeline_dir, folder)
    tamper, expected = BROKEN[case]
    tamper(folder)
    line = error_line(*run_cli(_command(command, folder, wan_set, tmp_path), capsys)[::2])
    for part in expected:
        assert part.format(folder=folder) in line, line
    assert not (tmp_path / "out").exists() and not (tmp_path / "run").exists()


@pytest.mark.parametrize("case", ["no vae", "truncated weights", "reshaped config", "missing tensors"])
def test_broken_teacher_config_is_one_line_through_fit(case, wan_pipeline_dir, wan_set, tmp_path, capsys):
    """The teacher as a backbone config (``class_path: WanBackbone``), not a path: the same one-line errors."""
    folder = (tmp_path / "wan").resolve()
    shutil.copytree(wan_pipeline_dir, folder)
    tamper, expected = BROKEN[case]
    tamper(folder)
    teacher = {"class_path": "WanBackbone", "init_args": {"path": str(folder)}}
    config = tmp_path / "fit.yaml"
    config.write_text(yaml.safe_dump(fit_config(teacher, wan_set, tmp_path / "run")))
    line = error_line(*run_cli(["fit", "--config", str(config)], capsys)[::2])
    for part in expected:
        assert part.format(folder=folder) in line, line


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("family", ["wan", "modelscope"])
def test_consistency_lora_fit_by_short_name_exports_a_pipeline(family, request, tmp_path, capsys):
    """``vdistill fit`` of consistency distillation with a LoRA student of ``class_path: WanBackbone`` /
    ``ModelScopeBackbone``, two steps on real-shaped clips; the ExportBackbone folder loads as a diffusers pipeline."""
    from diffusers import DiffusionPipeline

    folder = request.getfixturevalue(f"{family}_pipeline_dir")
    name, frames = ("WanBackbone", 5) if family == "wan" else ("ModelScopeBackbone", 2)
    cfg = {"seed_everything": 0,
           "trainer": {"accelerator": "cpu", "max_steps": 2, "logger": False, "enable_progress_bar": False,
                       "enable_model_summary": False, "default_root_dir": str(tmp_path / "run"),
                       "callbacks": [{"class_path": "ExportBackbone",
                                      "init_args": {"dirpath": str(tmp_path / "export")}}]},
           "model": {"class_path": "Distillation", "init_args": {
               "teacher": {"class_path": name, "init_args": {"path": str(folder)}},
               "objectives": [{"class_path": "ConsistencyDistillation"}], "guidance": 3.0,
               "student": {"mode": "lora", "lora_rank": 4, "guidance_embedding": True}, "lr": 1e-3}},
           "data": {"class_path": "ToyVideos", "init_args": {"batch_size": 1, "num_frames": frames, "size": 32,
                                                              "val_samples": 1}}}
    (tmp_path / "cd.yaml").write_text(yaml.safe_dump(cfg))
    code, _, err = run_cli(["fit", "--config", str(tmp_path / "cd.yaml")], capsys)
    assert code == 0, err
    pipe = DiffusionPipeline.from_pretrained(str(tmp_path / "export"))
    assert type(pipe).__name__ == ("WanPipeline" if family == "wan" else "TextToVideoSDPipeline")
    assert (tmp_path / "export" / "pytorch_lora_weights.safetensors").is_file()
