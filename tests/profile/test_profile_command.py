"""vdistill profile: every shipped recipe profiles; bad arguments are one-line errors (exit 2)."""

import json
from pathlib import Path

import pytest

from vdistill.cli import main

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
    out = tmp_path / "profile.json"
    main(["profile", *[a for c in configs for a in ("--config", c)], "--json", str(out)])
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


@pytest.mark.slow
@pytest.mark.parametrize("recipe", REAL_SIZE)
def test_real_size_recipes_profile(recipe, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    data = profiled([recipe], tmp_path, capsys)
    flops = data["flops_per_step"]
    assert flops["forward"]["student"] > 0
    # nothing of a denoiser's cost is left unattributed: the losses and solver steps are a sliver of it
    assert flops["forward"]["other"] + flops["backward"]["other"] < 0.05 * flops["total"]
