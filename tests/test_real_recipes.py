"""The real-teacher recipes (``experiments/{wan,modelscope,hunyuan}/*.yaml``) parse as shipped and train two steps on
CPU: a tiny random diffusers folder of the recipe's family in place of the teacher, and command-line overrides of
sizes and devices ONLY (teacher path and dtype, data root and clip size, batch, steps, accelerator, strategy,
precision, tiny critics without official weights). The AccVideo recipes read a tiny trajectory set that ``vdistill
synth`` writes with the synth settings their comments give; the T2V-Turbo recipes read a few tiny mp4s and a captions
file in the columns the recipe names."""

from __future__ import annotations

import json
import string
from pathlib import Path

import pytest
import torch
import yaml
from cli_helpers import run_cli
from video_helpers import coded_frames, write_video

ROOT = Path(__file__).resolve().parents[1]

RECIPES = sorted(p for family in ("wan", "modelscope", "hunyuan")
                 for p in (ROOT / "experiments" / family).glob("*.yaml"))
FOLDERS = {"WanBackbone": "wan_pipeline_dir", "ModelScopeBackbone": "modelscope_pipeline_dir",
           "HunyuanVideoBackbone": "hunyuan_pipeline_dir"}
#: the tiny clip per family: (frames, height, width) the tiny folders take (Wan / HunyuanVideo: 1 + 4k frames)
SIZES = {"WanBackbone": (5, 32, 32), "ModelScopeBackbone": (4, 32, 32), "HunyuanVideoBackbone": (5, 32, 32)}
PROMPTS = ["a red ball runs on the grass", "a blue dog jumps over the ball", "the cat runs", "a dog on the sky"]
BERT_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "the", "cat", "dog", "red", "blue", "ball", "runs"]
#: the critics' extra files for a tiny build: InternVideo2 reads its text with a BERT vocabulary
CRITIC_FILES = {"internvideo2": "tokenizer"}
SHRINK = ["--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.strategy=auto", "--trainer.precision=32",
          "--trainer.max_steps=2", "--trainer.accumulate_grad_batches=1", "--trainer.logger=false",
          "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
          "--model.init_args.teacher.init_args.torch_dtype=float32", "--data.init_args.batch_size=1",
          "--data.init_args.num_workers=0"]


def recipe_config(recipe: Path) -> dict:
    return yaml.safe_load(recipe.read_text())


def family(cfg: dict) -> str:
    return cfg["model"]["init_args"]["teacher"]["class_path"]


def test_every_family_has_its_recipes():
    names = {str(p.relative_to(ROOT / "experiments")) for p in RECIPES}
    assert {"wan/accvideo_1.3b.yaml", "wan/accvideo_14b.yaml", "wan/turbo_1.3b.yaml", "wan/dmd_1.3b.yaml",
            "modelscope/turbo.yaml", "hunyuan/accvideo.yaml"} <= names


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_recipe_parses_as_shipped(recipe, capsys):
    """Every class path resolves and every argument exists (``--print_config`` validates them all), with the
    real-scale settings on: bf16, gradient checkpointing of the student, a multi-device strategy."""
    code, out, err = run_cli(["fit", "--config", str(recipe), "--print_config"], capsys)
    assert code == 0, err
    cfg = yaml.safe_load(out)
    assert cfg["trainer"]["precision"] == "bf16-mixed"
    assert cfg["model"]["init_args"]["student"]["gradient_checkpointing"] is True
    assert cfg["trainer"]["strategy"]["class_path"].startswith("lightning.pytorch.strategies.")


def tiny_critics(critics: dict, tmp_path: Path) -> dict:
    """The recipe's critics at ``size: tiny`` without official weights (their other options kept)."""
    vocab = tmp_path / "bert"
    vocab.mkdir(exist_ok=True)
    (vocab / "vocab.txt").write_text("\n".join(BERT_VOCAB) + "\n")
    out = {}
    for name, spec in critics.items():
        spec = {**spec, "size": "tiny", "checkpoint": None}
        if CRITIC_FILES.get(spec.get("critic", name)) == "tokenizer":
            spec["tokenizer"] = str(vocab)
        out[name] = spec
    return out


def tiny_trajectories(folder: Path, frames: int, height: int, width: int, tmp_path: Path, capsys,
                      extra: list[str]) -> Path:
    """A tiny AccVideo set: the synth settings of the recipes (key points 0, 10, ..., 50 of the teacher's own 50
    steps, bf16 storage, ``extra`` flags) at a tiny size."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    out = tmp_path / "synvid"
    code, _, err = run_cli(["synth", "--model", str(folder), "--frames", str(frames), "--height", str(height),
                            "--width", str(width), "--key-indices", "0,10,20,30,40,50", "--dtype", "bfloat16",
                            "--prompts", str(prompts), "--out", str(out), *extra], capsys)
    assert code == 0, err
    return out


def tiny_clips(data: dict, tmp_path: Path) -> list[str]:
    """Four tiny mp4s and a captions file in the columns ``data`` (the recipe's VideoClips arguments) names; the
    overrides that point the recipe at them."""
    root = tmp_path / "videos"
    fmt = data.get("path_format")
    fields = [f for _, f, _, _ in string.Formatter().parse(fmt) if f] if fmt else [data.get("path_column", "path")]
    caption = data.get("caption_column", "caption")
    rows = []
    for i, prompt in enumerate(PROMPTS):
        values = {f: f"{f}{i}" for f in fields}
        rel = fmt.format(**values) if fmt else f"clip{i}.mp4"
        if not fmt:
            values = {fields[0]: rel}
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        write_video(root / rel, coded_frames(24), fps=24)
        rows.append({**values, caption: prompt})
    columns = [*fields, caption]
    captions = tmp_path / "captions.csv"
    captions.write_text("\n".join([",".join(columns), *(",".join(f'"{r[c]}"' for c in columns) for r in rows)]) + "\n")
    return [f"--data.init_args.captions={captions}", f"--data.init_args.video_root={root}"]


def changed(student_ckpt: Path, teacher_folder: Path) -> bool:
    """Whether the student of a checkpoint (LoRA adapters merged) differs from the teacher anywhere."""
    from vdistill.backbones.io import load_backbone

    student, teacher = load_backbone(student_ckpt), load_backbone(str(teacher_folder))
    ref = teacher.denoiser.state_dict()
    return any(not torch.equal(v, ref[k]) for k, v in student.denoiser.state_dict().items() if k in ref)


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_recipe_trains_two_steps_on_a_tiny_teacher(recipe, request, tmp_path, monkeypatch, capsys):
    cfg = recipe_config(recipe)
    kind = family(cfg)
    folder = request.getfixturevalue(FOLDERS[kind])
    frames, height, width = SIZES[kind]
    data = cfg["data"]["init_args"]
    args = ["fit", "--config", str(recipe), *SHRINK, f"--model.init_args.teacher.init_args.path={folder}"]
    if cfg["data"]["class_path"] == "TrajectoryData":
        guidance = cfg["model"]["init_args"]["teacher"]["init_args"].get("embedded_guidance")
        extra = [] if guidance is None else ["--guidance", str(guidance), "--cfg", "1.0"]  # as the recipe's synth
        synvid = tiny_trajectories(folder, frames, height, width, tmp_path, capsys, extra)
        args.append(f"--data.init_args.root={synvid}")
    else:
        args += tiny_clips(data, tmp_path)
        args += [f"--data.init_args.num_frames={frames}", f"--data.init_args.height={height}",
                 f"--data.init_args.width={width}"]
    critics = cfg["model"]["init_args"].get("critics")
    if critics:
        args.append(f"--model.init_args.critics={json.dumps(tiny_critics(critics, tmp_path))}")
    monkeypatch.chdir(tmp_path)  # the recipe's runs/... folders
    code, _, err = run_cli(args, capsys)
    assert code == 0, err

    run = tmp_path / cfg["trainer"]["default_root_dir"]
    last = run / "checkpoints" / "last.ckpt"
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == 2
    assert changed(last, folder)
    exports = [c["init_args"]["dirpath"] for c in cfg["trainer"]["callbacks"] if c["class_path"] == "ExportBackbone"]
    for export in exports:  # a WanPipeline / TextToVideoSDPipeline folder beside the vdistill files
        assert (tmp_path / export / "backbone.yaml").is_file() and (tmp_path / export / "model_index.json").is_file()
