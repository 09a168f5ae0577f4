"""The section "From a diffusers folder to a few-step pipeline" of docs/real-teachers.md, run as written on the
tiny Wan2.1 folder: only the model path, the sizes, the device, the dtypes and the run length are replaced. The
diffusers call of the page must give the video `vdistill sample` gives for the same prompt and seed."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import yaml
from cli_helpers import run_cli

ROOT = Path(__file__).resolve().parents[2]
SECTION = "## From a diffusers folder to a few-step pipeline"
TEACHER = "/models/Wan2.1-T2V-1.3B-Diffusers"
PROMPT = "a cat walks on the grass"
# the tiny folder's size and the CPU for the page's 81 x 480 x 832 bf16 run on cuda
SMALL = {"--frames 81": "--frames 5", "--height 480": "--height 32", "--width 832": "--width 32",
         "--model-dtype bfloat16": "--model-dtype float32", "--dtype bfloat16": "--dtype float32",
         "--device cuda": "--device cpu"}


def blocks(language: str) -> list[str]:
    text = (ROOT / "docs" / "real-teachers.md").read_text()
    section = text[text.index(SECTION):]
    section = section[: section.find("\n## ", 1)] if "\n## " in section[1:] else section
    return re.findall(rf"```{language}\n(.*?)```", section, flags=re.S)


def commands(script: str) -> list[list[str]]:
    """The ``vdistill`` command lines of a bash block (continuation lines joined, comments dropped)."""
    joined = re.sub(r"\\\n\s*", " ", script)
    return [shlex.split(line)[1:] for line in joined.splitlines() if line.startswith("vdistill ")]


def localise(text: str, folder: Path, tmp: Path) -> str:
    for old, new in SMALL.items():
        text = text.replace(old, new)
    return text.replace(TEACHER, str(folder)).replace("runs/", f"{tmp}/runs/").replace("prompts.txt",
                                                                                         str(tmp / "prompts.txt"))


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_the_readme_commands_and_diffusers_call(wan_pipeline_dir, tmp_path, capsys, monkeypatch):
    (tmp_path / "prompts.txt").write_text(PROMPT + "\n")
    recipe = next(b for b in blocks("yaml") if b.startswith("# wan_accvideo.yaml"))
    cfg = yaml.safe_load(localise(recipe, wan_pipeline_dir, tmp_path))
    cfg["model"]["init_args"]["teacher"]["init_args"]["torch_dtype"] = "float32"
    cfg["trainer"].update(precision="32-true", max_steps=2, accelerator="cpu", logger=False,
                          enable_progress_bar=False)
    (tmp_path / "wan_accvideo.yaml").write_text(yaml.safe_dump(cfg))
    monkeypatch.chdir(tmp_path)

    script = next(b for b in blocks("bash") if "vdistill synth" in b)
    ran = []
    for argv in commands(localise(script, wan_pipeline_dir, tmp_path)):
        if argv[0] == "sample":
            argv += ["--frames", "5", "--height", "32", "--width", "32", "--mp4", "0"]
        code, out, err = run_cli(argv, capsys)
        assert code == 0, f"vdistill {shlex.join(argv)}: {err}"
        ran.append(argv[0])
    assert ran == ["synth", "fit", "export", "sample"]
    export = tmp_path / "runs/wan/accvideo/export"
    scheduler = json.loads((export / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["_class_name"] == "FlowMatchEulerDiscreteScheduler"  # the stock one, as the page prints

    call = next(b for b in blocks("python") if "export_to_video(video" in b)
    call = call.replace("torch.bfloat16", "torch.float32").replace('.to("cuda")', "")
    call = call.replace("num_frames=81, height=480, width=832", "num_frames=5, height=32, width=32")
    call = localise(call, wan_pipeline_dir, tmp_path).replace('"cat.mp4"', f'"{tmp_path / "cat.mp4"}"')
    scope: dict = {}
    exec(compile(call, "docs/real-teachers.md", "exec"), scope)  # the page's own lines
    assert (tmp_path / "cat.mp4").stat().st_size > 0
    ours = np.load(tmp_path / "runs/wan/accvideo/samples/videos.npz")["videos"][0]  # uint8 [T, H, W, 3]
    theirs = np.asarray(scope["video"])  # float [T, H, W, 3] in [0, 1]
    assert theirs.shape == ours.shape and ours.std() > 1  # a video, not a constant
    assert np.abs(np.round(theirs * 255) - ours.astype(np.float64)).max() <= 1  # rounding to uint8 only
