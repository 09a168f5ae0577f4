"""ToyBench scores rendered videos perfectly, checks prompts, aggregates per prompt, and renders tables."""

from __future__ import annotations

import json

import pytest
import torch

from vdistill.errors import UserError
from vdistill.world import render_batch, toy_prompts
from vdistill.world.captions import all_captions
from vdistill.world.toybench import METRICS, ToyBench, evaluate, format_table

PROMPTS = toy_prompts()


@pytest.fixture(scope="module")
def videos() -> torch.Tensor:
    return render_batch(all_captions(), seed=0)


def test_real_videos_score_one(videos: torch.Tensor) -> None:
    result = ToyBench().evaluate(videos, PROMPTS)
    assert result.overall == {
        "colour": 1.0,
        "shape": 1.0,
        "motion": 1.0,
        "semantic": 1.0,
        "quality": pytest.approx(1.0, abs=0.01),
        "n": 48,
        "diversity": None,  # one video per prompt (test_diversity.py measures it)
    }
    assert list(result.per_prompt) == PROMPTS
    assert all(s["semantic"] == 1.0 and s["n"] == 1 for s in result.per_prompt.values())


def test_uint8_npz_layout_scores_the_same(videos: torch.Tensor) -> None:
    frames = (videos * 255).round().to(torch.uint8).permute(0, 1, 3, 4, 2).numpy()  # [N, T, H, W, 3]
    assert ToyBench().evaluate(frames, PROMPTS).overall == ToyBench().evaluate(videos, PROMPTS).overall


def test_wrong_prompts_lower_semantic_and_repeats_average(videos: torch.Tensor) -> None:
    # Each video scored against the prompt with the next motion: colour and shape right, motion wrong.
    shifted = [
        p.rsplit(" ", 1)[0] + " " + {"left": "right", "right": "up", "up": "down", "down": "left"}[p.split()[-1]]
        for p in PROMPTS
    ]
    result = ToyBench(batch_size=7).evaluate(videos, shifted)
    assert result.overall["motion"] == 0.0 and result.overall["colour"] == 1.0
    assert result.overall["semantic"] == pytest.approx(2 / 3)
    # Two videos under one prompt: one right, one wrong -> motion 0.5 for that prompt.
    pair = ToyBench().evaluate(videos[[0, 1]], [PROMPTS[0], PROMPTS[0]])
    assert pair.per_prompt[PROMPTS[0]]["motion"] == 0.5 and pair.per_prompt[PROMPTS[0]]["n"] == 2


def test_bad_inputs_raise_user_errors(videos: torch.Tensor) -> None:
    with pytest.raises(UserError, match="a purple hexagon"):
        ToyBench().evaluate(videos[:2], [PROMPTS[0], "a purple hexagon moving left"])
    with pytest.raises(UserError, match="2 videos but 1 prompts"):
        ToyBench().evaluate(videos[:2], PROMPTS[:1])
    with pytest.raises(UserError, match="N, T, 3, H, W"):
        ToyBench().evaluate(videos[0], PROMPTS[:1])


def test_json_and_table(videos: torch.Tensor) -> None:
    result = ToyBench().evaluate(videos[:4], PROMPTS[:4])
    assert json.loads(json.dumps(result.to_json()))["overall"]["n"] == 4
    table = format_table(
        {
            "teacher 50 steps": {**result.overall, "steps": 50, "seconds": 12.0},
            "student 4 steps": {**result.overall, "steps": 4, "seconds": 1.25, "speedup": "9.6x"},
        },
        lead_columns=["steps"],
        extra_columns=[("seconds", "time (s)"), ("speedup", "speed-up")],
    )
    lines = table.splitlines()
    metrics = ["semantic", "quality", "diversity", *METRICS[2:]]
    assert lines[0] == "| model | steps | " + " | ".join(metrics) + " | time (s) | speed-up |"
    assert lines[1].count("---") == 2 + len(metrics) + 2
    assert lines[3].startswith("| student 4 steps | 4 | 1.000 | 1.000 | n/a |") and "| 1.250 | 9.6x |" in lines[3]
    assert lines[2].endswith("| 12.000 | - |")  # a key the row lacks


def test_table_columns_default_to_the_rows_keys(videos: torch.Tensor) -> None:
    overall = evaluate(videos[:2], PROMPTS[:2]).overall
    overall.pop("diversity")
    table = format_table({"teacher": {**overall, "time (s)": 3.0, "steps": 50, "cfg": 7.5}})
    header, _, row = table.splitlines()
    assert header == "| model | steps | cfg | " + " | ".join(METRICS) + " | time (s) |"
    assert row == "| teacher | 50 | 7.500 | 1.000 | 1.000 | 1.000 | 1.000 | 1.000 | 3.000 |"
