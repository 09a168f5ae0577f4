"""``vdistill bench``: rows sampled on the same prompts, one table, speed-ups against the reference row."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

from vdistill.backbones.io import load_backbone, save_backbone
from vdistill.backbones.toy import ToyBackbone
from vdistill.commands.bench import run
from vdistill.errors import UserError
from vdistill.sampling.generate import video_size


@pytest.fixture
def prompts(tmp_path):
    """Three toy captions (the 48 of ``prompts: toy`` cost 16 times the sampling)."""
    path = tmp_path / "p.txt"
    path.write_text("a red circle moving left\na blue square moving up\na green triangle moving right\n")
    return path


@pytest.fixture
def tiny_export(tmp_path):
    torch.manual_seed(0)
    model = ToyBackbone(base_channels=8, channel_mult=(1, 2), emb_dim=16, text_dim=16, steps=4)
    return save_backbone(model, tmp_path / "m")


def test_bench_rows_table_and_speedup(tiny_export, tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red circle moving left\na blue square moving up\n")
    spec = {"out": str(tmp_path / "out"), "prompts": str(prompts), "reference": "slow",
            "rows": [{"name": "slow", "model": str(tiny_export), "steps": 6},
                     {"name": "fast", "model": str(tiny_export), "steps": 1, "cfg": 1.0}]}
    (tmp_path / "rows.yaml").write_text(yaml.safe_dump(spec))
    res = run([str(tmp_path / "rows.yaml")])
    # the speed-up is the reference's sampling time over the row's, both measured in this run (no bound on either:
    # a shared CPU's clock proves nothing)
    assert res["slow"]["speed-up"] == 1.0
    assert res["fast"]["speed-up"] == pytest.approx(res["slow"]["time (s)"] / res["fast"]["time (s)"])
    assert (res["slow"]["steps"], res["fast"]["steps"], res["fast"]["cfg"]) == (6, 1, 1.0)  # the rows' own settings
    saved = json.loads((tmp_path / "out" / "toybench.json").read_text())
    assert saved == json.loads(json.dumps(res)) and "semantic" in saved["fast"]
    assert "| fast |" in (tmp_path / "out" / "toybench.md").read_text()
    frames, height, width = video_size(load_backbone(tiny_export))
    for row in ("slow", "fast"):
        data = np.load(tmp_path / "out" / "samples" / row / "videos.npz")
        assert data["videos"].shape == (2, frames, height, width, 3)  # one video per prompt, the model's own size


@pytest.mark.parametrize("rows, reference, message", [
    ([{"name": "a"}], None, "needs 'name' and 'model'"),
    ([{"name": "a", "model": "toy-flow", "stepz": 3}], None, "may have"),
    ([{"name": "a", "model": "toy-flow"}, {"name": "a", "model": "toy-flow"}], None, "unique"),
    ([{"name": "a", "model": "toy-flow"}], "b", "reference row 'b'"),
])
def test_bench_rejects_bad_rows(tmp_path, rows, reference, message):
    (tmp_path / "rows.yaml").write_text(yaml.safe_dump({"rows": rows, "reference": reference}))
    with pytest.raises(UserError, match=message):
        run([str(tmp_path / "rows.yaml")])


def test_bench_mp4_count_and_device_options(tiny_export, prompts, tmp_path, monkeypatch):
    spec = {"out": str(tmp_path / "out"), "prompts": str(prompts), "mp4": 2,
            "rows": [{"name": "a", "model": str(tiny_export), "steps": 1}]}
    (tmp_path / "rows.yaml").write_text(yaml.safe_dump(spec))
    run([str(tmp_path / "rows.yaml"), "--device", "cpu"])
    assert len(list((tmp_path / "out" / "samples" / "a" / "mp4").glob("*.mp4"))) == 2
    run([str(tmp_path / "rows.yaml"), "--out", str(tmp_path / "none"), "--mp4", "0"])  # the flag beats the file
    assert not list((tmp_path / "none" / "samples" / "a").glob("**/*.mp4"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match="no CUDA GPU is visible"):
        run([str(tmp_path / "rows.yaml"), "--device", "cuda"])
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({**spec, "devise": "cpu"}))
    with pytest.raises(UserError, match="unknown keys \\['devise'\\].*device"):
        run([str(tmp_path / "bad.yaml")])


def test_bench_runs_only_the_named_rows(tiny_export, prompts, tmp_path):
    spec = {"out": str(tmp_path / "out"), "prompts": str(prompts), "mp4": 0, "reference": "a",
            "rows": [{"name": n, "model": str(tiny_export), "steps": 1} for n in ("a", "b", "c")]}
    (tmp_path / "rows.yaml").write_text(yaml.safe_dump(spec))
    res = run([str(tmp_path / "rows.yaml"), "--rows", "a", "c"])
    assert set(res) == {"a", "c"} and not (tmp_path / "out" / "samples" / "b").exists()
    with pytest.raises(UserError, match=r"--rows \['d'\] are not rows of .*its rows: \['a', 'b', 'c'\]"):
        run([str(tmp_path / "rows.yaml"), "--rows", "a", "d"])
    with pytest.raises(UserError, match="reference row 'a'"):
        run([str(tmp_path / "rows.yaml"), "--rows", "b"])


def test_bench_pairs_every_row_with_the_reference(tiny_export, prompts, tmp_path):
    """Rows on the same prompts and seeds: a row that IS the reference (same model, steps) differs by exactly 0 +/- 0;
    another row's difference and error are those of its per-video scores against the reference's, recomputed here
    from the two rows' saved videos."""
    from vdistill.world.toybench import METRICS, evaluate

    spec = {"out": str(tmp_path / "out"), "prompts": str(prompts), "reference": "ref", "repeat": 2, "mp4": 0,
            "rows": [{"name": "ref", "model": str(tiny_export), "steps": 3},
                     {"name": "same", "model": str(tiny_export), "steps": 3},
                     {"name": "other", "model": str(tiny_export), "steps": 1, "cfg": 1.0}]}
    (tmp_path / "rows.yaml").write_text(yaml.safe_dump(spec))
    res = run([str(tmp_path / "rows.yaml")])
    assert res["same"]["quality diff"] == 0.0 and res["same"]["quality diff se"] == 0.0
    assert "quality diff" not in res["ref"] and res["ref"]["quality se"] >= 0.0
    scored = {}
    for row in ("ref", "other"):
        data = np.load(tmp_path / "out" / "samples" / row / "videos.npz")
        scored[row] = evaluate(data["videos"], [str(p) for p in data["prompts"]]).scores
    for m in ("semantic", "quality"):
        d = scored["other"][:, METRICS.index(m)] - scored["ref"][:, METRICS.index(m)]
        assert res["other"][f"{m} diff"] == pytest.approx(d.mean())
        assert res["other"][f"{m} diff se"] == pytest.approx(d.std(ddof=1) / np.sqrt(6))
    table = (tmp_path / "out" / "toybench.md").read_text()
    assert "quality vs ref" in table and f"{res['other']['quality diff']:+.3f} +/-" in table
