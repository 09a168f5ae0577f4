"""ThroughputMemory: the ``perf/*`` names (pinned: the callback overrides a hook of Lightning's ThroughputMonitor),
sensible values, batch sizes of vdistill's batches."""

from __future__ import annotations

import warnings

import lightning as L
import pytest
import torch
from callback_helpers import MemoryLogger, distillation, fit

from vdistill.callbacks import ThroughputMemory
from vdistill.callbacks.throughput import batch_size, peak_memory
from vdistill.errors import UserError


@pytest.mark.parametrize("every", [1, 3])
def test_perf_curves(toy, tmp_path, every):
    logger = MemoryLogger()
    L.seed_everything(0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no "define flops_per_batch" warning
        warnings.filterwarnings("ignore", message=".*(eval mode|LeafSpec|logging interval|num_workers|GPU available)")
        fit(distillation(toy), toy, tmp_path, [ThroughputMemory(window_size=2)], max_steps=4, logger=logger,
            log_every_n_steps=every)
    perf = [(step, {k: v for k, v in m.items() if k.startswith("perf/")}) for step, m in logger.history]
    perf = [(step, m) for step, m in perf if m]
    assert not any(k.startswith(("train/", "train|")) for k in logger.keys())  # only our names
    # Lightning's own rule for when and at which step: beside the module's loss curves
    loss_steps = [step for step, m in logger.history if "loss/total" in m]
    assert [step for step, _ in perf] == loss_steps and len(loss_steps) == 4 // every
    if every == 1:
        assert set(perf[0][1]) == {"perf/peak_rss_gib"}  # the window of 2 batches is not full yet
    assert set(perf[-1][1]) == {"perf/steps_per_sec", "perf/samples_per_sec", "perf/peak_rss_gib"}
    last = perf[-1][1]
    assert last["perf/steps_per_sec"] > 0 and last["perf/samples_per_sec"] == pytest.approx(
        2 * last["perf/steps_per_sec"])  # batches of 2
    assert 0.01 < last["perf/peak_rss_gib"] < 64


def test_batch_sizes_and_errors():
    assert batch_size({"latents": torch.zeros(3, 2, 1), "prompt": ["a"] * 3}) == 3
    assert batch_size((torch.zeros(5, 8, 3, 4, 4), ["p"] * 5)) == 5
    assert batch_size({"prompts": ["a", "b"]}) == 2 and batch_size(torch.zeros(7, 1)) == 7
    with pytest.raises(UserError, match="cannot tell the batch size of a str batch"):
        batch_size("abc")
    with pytest.raises(UserError, match="window_size must be >= 2, got 1"):
        ThroughputMemory(window_size=1)
    assert set(peak_memory(torch.device("cpu"))) == {"peak_rss_gib"}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_peak_cuda_memory():
    device = torch.device("cuda")
    torch.cuda.reset_peak_memory_stats(device)
    x = torch.empty(256, 1024, 1024, device=device)  # 1 GiB
    peak = peak_memory(device)
    del x
    assert peak["peak_cuda_allocated_gib"] >= 1.0 and peak["peak_cuda_reserved_gib"] >= 1.0
