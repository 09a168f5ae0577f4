"""Predicted memory of a small recipe's training step against the same step run for real on the CPU."""

from pathlib import Path

import pytest
import torch
from torch.profiler import ProfilerActivity, profile
from torch.profiler._memory_profiler import MemoryProfileTimeline

from vdistill.commands.profile import parse_args
from vdistill.commands.profile import profile as predict
from vdistill.profile.measure import run_step, trained_parameters
from vdistill.profile.recipe import read_recipe
from vdistill.profile.trace import build

ROOT = Path(__file__).resolve().parents[2]


def allocated_peak(fn) -> int:
    """Peak bytes the CPU allocator holds while ``fn()`` runs (torch's profiler memory timeline, every category,
    the parameters that exist before included)."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as prof:
        fn()
    _, sizes = MemoryProfileTimeline(prof._memory_profile())._coalesce_timeline("cpu")
    return max(sum(row) for row in sizes)


@pytest.mark.slow
@pytest.mark.parametrize("configs", [["experiments/toy/accvideo/accvideo.yaml"], ["experiments/toy/turbo/turbo.yaml"]])
def test_predicted_peak_is_within_10_percent_of_a_real_step(configs, monkeypatch):
    monkeypatch.chdir(ROOT)
    argv = [a for c in configs for a in ("--config", c)] + ["--devices", "1", "--batch", "4"]
    memory = predict(parse_args(argv))["memory_per_rank_bytes"]
    predicted = memory["peak"] - memory["ema"]  # run_step keeps no EMA of the student
    torch.manual_seed(0)
    setup = build(read_recipe(configs), {"batch": 4}, device="cpu")
    optimizer = torch.optim.AdamW(trained_parameters(setup), lr=1e-6)
    run_step(setup, optimizer)  # the first step makes AdamW's state: the second is every later step
    real = allocated_peak(lambda: run_step(setup, optimizer))
    assert abs(predicted - real) / real < 0.10, (predicted, real)
