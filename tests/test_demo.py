"""``vdistill demo``: the whole pipeline (synth -> distil -> bench) on the shipped teacher and critics, shrunk."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vdistill.commands.demo import run


@pytest.mark.slow
def test_demo_pipeline_end_to_end_and_rerun(tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle moving left\na blue triangle moving up\n")
    out = tmp_path / "demo"
    args = ["--out", str(out), "--prompts", str(prompts), "--repeat", "2", "--bench-repeat", "1", "--max-steps", "2"]
    results = run(args)
    assert list(results) == ["teacher_50steps_cfg", "teacher_2steps_cfg", "shipped_student_2steps", "student_2steps"]
    # both students sample at the teacher's short row's step count, without CFG; speed-ups against the 50-step row
    short = results["teacher_2steps_cfg"]["steps"]
    for student in ("shipped_student_2steps", "student_2steps"):
        assert (results[student]["steps"], results[student]["cfg"]) == (short, 1.0)
    assert results["teacher_50steps_cfg"]["speed-up"] == 1.0 and all("speed-up" in r for r in results.values())
    for row in results:
        assert np.load(out / "samples" / row / "videos.npz")["videos"].shape[0] == 2
    saved = json.loads((out / "toybench.json").read_text())
    assert set(saved) == set(results)
    assert len(json.loads((out / "stages.json").read_text())) == 3  # each stage's time (its value is not checked)
    train = out / "train"
    assert (train / "export" / "model.safetensors").is_file() and (train / "checkpoints" / "last.ckpt").is_file()
    assert list(train.glob("lightning_logs/version_0/events.out.tfevents*"))
    assert list(train.glob("lightning_logs/version_0/samples/step_*/grid.gif"))  # callbacks/video_samples.yaml
    printed = capsys.readouterr().out
    assert f"tensorboard --logdir {train}" in printed
    # a rerun reuses the trajectories and the finished training
    run(args)
    assert "reusing the finished training" in capsys.readouterr().out


@pytest.mark.slow
def test_demo_takes_config_fragments(tmp_path, capsys, monkeypatch):
    from pathlib import Path

    import yaml

    import vdistill.commands.demo as demo

    seeds = []
    bench = demo.run_bench
    monkeypatch.setattr(demo, "run_bench", lambda *a, **k: seeds.append(a[4]) or bench(*a, **k))

    fragment = Path(__file__).resolve().parents[1] / "experiments/toy/accvideo/demo_paired.yaml"
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle moving left\n")
    out = tmp_path / "demo"
    run(["--out", str(out), "--prompts", str(prompts), "--max-steps", "1", "--no-callbacks", "--config", str(fragment)])
    assert f"--config {fragment}" in capsys.readouterr().out
    # the training ran the fragment's objectives, with its settings
    cfg = yaml.safe_load(next((out / "train").glob("lightning_logs/version_0/config.yaml")).read_text())
    trained = cfg["model"]["init_args"]["objectives"]
    written = yaml.safe_load(fragment.read_text())["model"]["init_args"]["objectives"]
    assert len(trained) == len(written)
    for got, want in zip(trained, written):
        assert got["class_path"].rsplit(".", 1)[-1] == want["class_path"]
        assert {k: got["init_args"][k] for k in want["init_args"]} == want["init_args"]
    assert len(seeds) == 1 and seeds[0] >= 1  # the bench's noise is not the one trajectory's (seed 0)


def test_demo_refuses_a_missing_fragment(tmp_path):
    from vdistill.errors import UserError

    with pytest.raises(UserError, match=r"--config fragment\(s\) \['nope.yaml'\] do not exist"):
        run(["--out", str(tmp_path / "d"), "--config", "nope.yaml"])
