"""The oracle reads rendered toy videos perfectly, noise at chance, and quality falls with degradation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vdistill.errors import UserError
from vdistill.world import SHAPES, all_captions, render_batch
from vdistill.world.oracle import oracle, oracle_batch, pixel_thresholds
from vdistill.world.render import shape_mask

CAPTIONS = all_captions()


def _accuracy(videos: torch.Tensor) -> dict[str, float]:
    readings = oracle_batch(videos)
    captions = [CAPTIONS[i % len(CAPTIONS)] for i in range(len(videos))]
    correct = [r.correct(c) for r, c in zip(readings, captions)]
    acc = {k: float(np.mean([c[k] for c in correct])) for k in ("colour", "shape", "motion")}
    return {**acc, "quality": float(np.mean([r.quality for r in readings]))}


def _blur(videos: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``[B, T, 3, H, W]`` videos, 7 taps, replicate padding."""
    taps = torch.exp(-(torch.arange(-3, 4.0) ** 2) / (2 * sigma**2))
    taps = taps / taps.sum()
    B, T, C, H, W = videos.shape
    x = videos.reshape(-1, 1, H, W)
    x = F.conv2d(F.pad(x, (3, 3, 0, 0), mode="replicate"), taps.view(1, 1, 1, 7))
    x = F.conv2d(F.pad(x, (0, 0, 3, 3), mode="replicate"), taps.view(1, 1, 7, 1))
    return x.reshape(B, T, C, H, W)


@pytest.mark.parametrize("shape", SHAPES)
def test_pixel_thresholds_reproduce_the_renderer(shape: str) -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        r = rng.uniform(1.0, 6.0)
        cx, cy = rng.uniform(0, 16, 8), rng.uniform(0, 16, 8)
        anchor_y = cy + (r / 3 if shape == "triangle" else 0)  # triangles are anchored at their centroid
        drawn = pixel_thresholds(shape, cx.astype(np.float32), anchor_y.astype(np.float32), 16, 16) <= r
        np.testing.assert_array_equal(drawn.reshape(8, 16, 16), shape_mask(shape, cx, cy, r, 16))


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_real_videos_are_read_perfectly(seed: int) -> None:
    readings = oracle_batch(render_batch(CAPTIONS, seed))
    for reading, caption in zip(readings, CAPTIONS):
        assert all(reading.correct(caption).values()), (caption, reading)
        assert reading.quality >= 0.99


def test_noise_scores_at_or_below_chance() -> None:
    noise = torch.rand(len(CAPTIONS) * 4, 8, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    acc = _accuracy(noise)
    assert acc["colour"] <= 0.3 and acc["shape"] <= 0.4 and acc["motion"] <= 0.3
    assert acc["quality"] < 0.1


def test_quality_falls_with_noise_and_blur() -> None:
    videos = render_batch(CAPTIONS, 0)
    g = torch.Generator().manual_seed(0)
    noisy = [
        _accuracy((videos + std * torch.randn(videos.shape, generator=g)).clamp(0, 1))["quality"]
        for std in (0.0, 0.1, 0.2, 0.3)
    ]
    blurred = [_accuracy(_blur(videos, sigma))["quality"] for sigma in (0.3, 0.8, 1.5, 2.5)]
    for q in (noisy, blurred):
        assert q[0] >= 0.99
        assert all(a > b for a, b in zip(q, q[1:])), q


def test_flicker_lowers_steadiness() -> None:
    videos = render_batch(CAPTIONS[:12], 0).clone()
    videos[:, 1::3] = 0  # the object vanishes in 3 of 8 frames
    readings = oracle_batch(videos)
    assert all(r.steadiness < 0.2 and r.quality < 0.2 for r in readings)
    assert all(all(r.correct(c).values()) for r, c in zip(readings, CAPTIONS[:12]))  # still in most frames


def test_missing_or_static_object_reads_none() -> None:
    empty = oracle(torch.zeros(8, 3, 16, 16))
    assert (empty.colour, empty.shape, empty.motion, empty.quality) == (None, None, None, 0.0)
    static = render_batch(CAPTIONS[:1], 0)[0, :1].expand(8, -1, -1, -1)  # first frame held still
    reading = oracle(static)
    assert reading.motion is None and reading.colour == CAPTIONS[0].colour and reading.quality >= 0.99


def test_single_and_batch_agree_and_bad_shapes_raise() -> None:
    videos = render_batch(CAPTIONS[:3], 5)
    assert [oracle(v) for v in videos] == oracle_batch(videos)
    with pytest.raises(UserError, match="T, 3, H, W"):
        oracle(videos)
    with pytest.raises(UserError, match="B, T, 3, H, W"):
        oracle_batch(videos[:, :, :2])


def test_a_thousand_videos_score_in_one_batch_as_in_small_ones() -> None:
    """The batched oracle reads a thousand videos at once (ToyBench's default batch) as it reads them 50 at a time:
    nothing in the batch leaks into another video's reading."""
    videos = torch.cat([render_batch(CAPTIONS, s) for s in range(21)])[:1000]
    assert oracle_batch(videos) == [r for i in range(0, 1000, 50) for r in oracle_batch(videos[i:i + 50])]
