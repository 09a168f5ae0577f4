"""vdistill profile: every shipped recipe profiles; bad arguments are one-line errors (exit 2)."""

import json
import shutil
from pathlib import Path

import pytest
import yaml

from vdistill.cli import main
from vdistill.profile.models import config_folder

ROOT = Path(__file__).resolve().parents[2]
REAL_SIZE = sorted(str(p.relative_to(ROOT)) for d in ("wan", "modelscope", "hunyuan")
                   for p in (ROOT / "experiments" / d).glob("*.yaml"))
TOY = [["experiments/toy/accvideo/accvideo.yaml"], ["experiments/toy/turbo/turbo.yaml"],
       ["experiments/toy/accvideo/accvideo.yaml", "experiments/toy/dmd/dmd.yaml"]]


def test_bad_config_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    with pytest.raises(SystemExit) as err:
        main(["profile", "--config", str(tmp_path / "nope.yaml")])
    assert err.value.code == 2
    msg = capsys.readouterr().err.strip()
    assert msg.count("\n") == 0 and "nope.yaml" in msg


def test_bad_gpu_memory_is_one_line(capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    with pytest.raises(SystemExit) as err:
        main(["profile", "--config", "experiments/wan/turbo_1.3b.yaml", "--gpu-memory", "-3"])
    assert err.value.code == 2
    msg = capsys.readouterr().err.strip()
    assert msg.count("\n") == 0 and "--gpu-memory" in msg


def profiled(configs: list[str], tmp_path: Path, capsys) -> dict:
    """``vdistill profile`` of the recipe files in ``configs`` (other items: options passed as they are)."""
    out = tmp_path / "profile.json"
    args = [a for c in configs for a in (("--config", c) if c.endswith(".yaml") else (c,))]
    main(["profile", *args, "--json", str(out)])
    table = capsys.readouterr().out
    assert "speed-up limit" in table and "predicted peak" in table
    return json.loads(out.read_text())


@pytest.mark.parametrize("configs", TOY, ids=lambda c: "+".join(Path(p).stem for p in c))
def test_toy_recipes_profile(configs, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    data = profiled(configs, tmp_path, capsys)
    flops = data["flops_per_step"]
    assert flops["forward"]["student"] > 0 and flops["backward"]["student"] > 0
    memory = data["memory_per_rank_bytes"]
    assert memory["activations"] > 0 and memory["peak"] > memory["weights"]
    assert data["video"]["speedup_limit"] > 1


#: config keys of a denoiser or text encoder that count repeated blocks (Wan, HunyuanVideo, UMT5, CLIP, Llama, UNet)
BLOCK_COUNTS = ("num_layers", "num_single_layers", "num_hidden_layers", "num_decoder_layers", "layers_per_block")


def one_block_configs(recipe: str, out: Path) -> Path:
    """A copy of the shipped configs of ``recipe``'s teacher with every repeated-block count cut to 1 (text encoders:
    3, as HunyuanVideo reads its Llama's third-to-last hidden state): the same parts, widths and video sizes, a
    fraction of the ops to trace."""
    teacher = yaml.safe_load((ROOT / recipe).read_text())["model"]["init_args"]["teacher"]
    path = teacher["init_args"]["path"] if isinstance(teacher, dict) else teacher
    shutil.copytree(config_folder(path, None), out)
    for file in out.rglob("config.json"):
        config = json.loads(file.read_text())
        cut = {k: min(v, 3 if k == "num_hidden_layers" else 1) for k, v in config.items()
               if k in BLOCK_COUNTS and isinstance(v, int)}
        file.write_text(json.dumps({**config, **cut}))
    return out


def check_attribution(data: dict) -> None:
    flops = data["flops_per_step"]
    assert flops["forward"]["student"] > 0
    # nothing of a denoiser's cost is left unattributed: the losses and solver steps are a sliver of it
    assert flops["forward"]["other"] + flops["backward"]["other"] < 0.05 * flops["total"]


@pytest.mark.parametrize("recipe", REAL_SIZE)
def test_every_real_teacher_recipe_profiles(recipe, tmp_path, capsys, monkeypatch):
    """Each shipped recipe of a real teacher, on its teacher's shipped configs with one block per stack (the full
    stacks only repeat the same ops; the Wan2.1-1.3B recipe below traces them)."""
    monkeypatch.chdir(ROOT)
    folder = one_block_configs(recipe, tmp_path / "configs")
    data = profiled([recipe, "--teacher-config", str(folder)], tmp_path, capsys)
    check_attribution(data)
    assert data["memory_per_rank_bytes"]["peak"] > data["memory_per_rank_bytes"]["weights"] > 0


@pytest.mark.slow
def test_a_recipe_profiles_at_its_real_size(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    check_attribution(profiled(["experiments/wan/accvideo_1.3b.yaml"], tmp_path, capsys))
