"""A mix that lacks what it needs fails right after the config is parsed: one line, exit status 2, nothing run."""

from __future__ import annotations

import re
import sys

import pytest
import yaml

from vdistill.cli import main

TRAJECTORY_DATA = {"class_path": "TrajectoryData", "init_args": {"root": "does/not/matter", "batch_size": 2}}
VIDEO_DATA = {"class_path": "ToyVideos", "init_args": {"batch_size": 2}}
ADVERSARIAL = {"class_path": "AdversarialAlignment"}
CONSISTENCY = {"class_path": "ConsistencyDistillation"}
DISCRIMINATOR = {"class_path": "Discriminator"}


def config(objectives: list[dict], data: dict, **model) -> dict:
    return {"model": {"class_path": "Distillation",
                      "init_args": {"teacher": "toy-flow", "objectives": objectives, **model}},
            "data": data}


CASES = {
    "adversarial without key points": (
        config([{"class_path": "TrajectoryGuidance"}, ADVERSARIAL], VIDEO_DATA, discriminator=DISCRIMINATOR),
        r"TrajectoryGuidance needs trajectory .*AdversarialAlignment needs trajectory .*the data is ToyVideos"),
    "trajectory guidance without key points": (
        config([{"class_path": "TrajectoryGuidance"}], VIDEO_DATA),
        r"TrajectoryGuidance needs trajectory \(batches of teacher key points .*TrajectoryData.*\) "
        r"\(the data is ToyVideos\)$"),
    "consistency without videos": (
        config([CONSISTENCY], TRAJECTORY_DATA), r"ConsistencyDistillation needs videos .*the data is TrajectoryData"),
    "reward without critics": (
        config([{"class_path": "TrajectoryGuidance"}, {"class_path": "RewardFeedback",
                                                       "init_args": {"critics": {"toy-video": 1.0}}}],
               TRAJECTORY_DATA),
        r"RewardFeedback needs critics \(reward critics \(model.critics\)\)"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_mix_lacking_its_needs_fails_at_parse_time(case, tmp_path, monkeypatch, capsys):
    cfg, message = CASES[case]
    cfg["trainer"] = {"accelerator": "cpu", "max_steps": 1, "default_root_dir": str(tmp_path / "run")}
    path = tmp_path / "mix.yaml"
    path.write_text(yaml.safe_dump(cfg))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["vdistill"])
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--config", str(path)])
    assert exc.value.code == 2
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if line.startswith("vdistill: error:")]
    assert len(errors) == 1, captured.err
    assert re.search(message, errors[0]), errors[0]
    # before the Trainer: no "GPU available" banner, no run folder, no logs
    assert "GPU available" not in captured.out + captured.err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mix.yaml"]
