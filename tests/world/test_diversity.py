"""ToyBench's diversity: the oracle reads start position and size from pixels (sharp, blurred, faint or noisy),
and the spread ratio is 1 for real clips, ~1 for other seeds, 0 for a student that ignores its noise, and falls
monotonically as the renderer's jitter is shrunk."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vdistill.world import all_captions, render_batch, toy_prompts
from vdistill.world.captions import COLOURS, MOTION_VECTORS, Caption
from vdistill.world.oracle import geometry_batch, oracle
from vdistill.world.render import WorldConfig, shape_mask
from vdistill.world.toybench import DATA_REFERENCE, ToyBench, data_spread, format_table, spread_of

CAPTIONS = all_captions()
PROMPTS = toy_prompts()


def _render(caption: Caption, rng: np.random.Generator, scale: float) -> tuple[np.ndarray, tuple[float, ...]]:
    """``render.render`` with each jittered draw pulled towards the middle of its range by ``scale`` (1: the same
    video), and the truth: the first frame's centroid ``(x, y)`` and the extent, in pixels."""
    cfg = WorldConfig()

    def draw(lo: float, hi: float) -> float:
        return (lo + hi) / 2 + scale * (rng.uniform(lo, hi) - (lo + hi) / 2)

    n, T = cfg.size, cfg.num_frames
    extent = draw(*cfg.object_size) * n
    r = extent / 2
    travel = draw(*cfg.travel) * n
    dx, dy = MOTION_VECTORS[caption.motion]
    along0 = draw(r, max(r, n - r - travel))
    across = draw(r, n - r)
    steps = np.linspace(0.0, travel, T)
    start = along0 if dx + dy > 0 else n - along0
    if dx != 0:
        cx, cy = start + dx * steps, np.full(T, across)
    else:
        cx, cy = np.full(T, across), start + dy * steps
    mask = shape_mask(caption.shape, cx, cy, r, n)
    video = (mask[:, None] * np.asarray(COLOURS[caption.colour], np.float32)[None, :, None, None]).astype(np.float32)
    return video, (cx[0], cy[0] + (r / 3 if caption.shape == "triangle" else 0), extent)


def jittered(repeat: int, seed: int, scale: float = 1.0) -> tuple[torch.Tensor, list[str], np.ndarray]:
    """``repeat`` clips of every toy prompt (consecutive, as ``load_prompts`` repeats), prompts, truth ``[N, 3]``."""
    rng = np.random.default_rng(seed)
    drawn = [_render(c, rng, scale) for c in CAPTIONS for _ in range(repeat)]
    videos = torch.from_numpy(np.stack([v for v, _ in drawn]))
    return videos, [p for p in PROMPTS for _ in range(repeat)], np.array([t for _, t in drawn])


def _blur(videos: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``[B, T, 3, H, W]`` videos, 7 taps, zero padding (black beyond the frame)."""
    taps = torch.exp(-(torch.arange(-3, 4.0) ** 2) / (2 * sigma**2))
    taps = taps / taps.sum()
    B, T, C, H, W = videos.shape
    x = F.conv2d(F.pad(videos.reshape(-1, 1, H, W), (3, 3, 0, 0)), taps.view(1, 1, 1, 7))
    x = F.conv2d(F.pad(x, (0, 0, 3, 3)), taps.view(1, 1, 7, 1))
    return x.reshape(B, T, C, H, W)


def _degraded(videos: torch.Tensor) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    noise = torch.randn((2, *videos.shape), generator=g)
    return {
        "sharp": videos,
        "blurred": _blur(videos, 1.0),
        "faint": 0.3 * videos,
        "noisy": (videos + 0.05 * noise[0]).clamp(0, 1),
        "faint, blurred and noisy": (0.4 * _blur(videos, 1.0) + 0.03 * noise[1]).clamp(0, 1),
    }


def test_the_jitter_copy_is_the_renderer_at_scale_one() -> None:
    videos, _, _ = jittered(1, seed=11)
    assert torch.equal(videos, render_batch(CAPTIONS, 11))


@pytest.fixture(scope="module")
def real4() -> tuple[torch.Tensor, list[str], np.ndarray]:
    return jittered(4, seed=101)


@pytest.mark.parametrize("kind", ["sharp", "blurred", "faint", "noisy", "faint, blurred and noisy"])
def test_geometry_reads_start_and_size(real4, kind: str) -> None:
    videos, _, truth = real4
    geo = geometry_batch(_degraded(videos)[kind]).numpy() * 16  # pixels
    assert not np.isnan(geo).any()
    err = geo[:, :2] - truth[:, :2]
    assert np.abs(err.mean(axis=0)).max() < 0.05 and np.sqrt((err**2).mean(axis=0)).max() < 0.25, err
    shapes = np.array([c.shape for c in CAPTIONS for _ in range(4)])
    for shape in ("circle", "square", "triangle"):  # sqrt(area) / extent depends on the shape: within one shape
        k = shapes == shape
        assert np.corrcoef(geo[k, 2], truth[k, 2])[0, 1] > 0.93, shape


@pytest.mark.parametrize("kind", ["blurred", "faint", "noisy", "faint, blurred and noisy"])
def test_degraded_clips_keep_their_diversity(real4, kind: str) -> None:
    videos, prompts, _ = real4
    sharp = spread_of(videos, prompts)
    d = spread_of(_degraded(videos)[kind], prompts).diversity(sharp)
    assert d["position"] == pytest.approx(1, abs=0.02) and d["size"] == pytest.approx(1, abs=0.04), d


def test_real_clips_score_one_against_themselves_and_near_one_on_other_seeds(real4) -> None:
    videos, prompts, _ = real4
    res = ToyBench().evaluate(videos, prompts, reference=spread_of(videos, prompts), reference_label="themselves")
    assert res.overall["diversity"] == 1.0
    assert res.diversity == {"diversity": 1.0, "position": 1.0, "size": 1.0, "se": 0.0}
    assert res.to_json()["diversity"]["reference"] == "themselves"
    for repeat, seed in ((4, 202), (8, 303)):  # other seeds, against seed 101's four and the rendered reference
        other, other_prompts, _ = jittered(repeat, seed)
        spread = spread_of(other, other_prompts)
        assert spread.diversity(res.spread)["diversity"] == pytest.approx(1, abs=0.12)
        result = ToyBench().evaluate(other, other_prompts)
        assert result.reference_label == DATA_REFERENCE and result.spread == spread
        assert result.overall["diversity"] == pytest.approx(1, abs=0.1)  # ~3 standard deviations at 4 seeds
        assert result.overall["semantic"] == 1.0


def test_the_jackknife_error_matches_the_scatter_over_seed_sets() -> None:
    reference = data_spread(PROMPTS, 8, 16, 16)
    draws = [spread_of(*jittered(4, seed)[:2]).diversity(reference) for seed in range(400, 408)]
    scatter = np.std([d["diversity"] for d in draws], ddof=1)
    se = np.mean([d["se"] for d in draws])
    assert 0.5 < se / scatter < 2, (se, scatter)  # ~0.03 at 4 seeds of 48 prompts
    assert max(abs(d["diversity"] - 1) for d in draws) < 4 * se


def test_a_student_that_ignores_its_noise_scores_zero() -> None:
    videos = render_batch(CAPTIONS, 5).repeat_interleave(4, dim=0)  # one clip per prompt, whatever the seed
    prompts = [p for p in PROMPTS for _ in range(4)]
    res = ToyBench().evaluate(videos, prompts)
    assert res.overall["diversity"] == 0.0 and res.overall["semantic"] == 1.0
    # As the reference, a collapsed row makes every diversity undefined rather than infinite.
    again = ToyBench().evaluate(videos, prompts, reference=res.spread, reference_label="collapsed")
    assert again.overall["diversity"] is None and "spread is 0" in again.undefined


def test_shrinking_the_jitter_lowers_diversity_monotonically() -> None:
    reference = data_spread(PROMPTS, 8, 16, 16)
    scores = {}
    for scale in (1.0, 0.75, 0.5, 0.25):
        videos, prompts, _ = jittered(4, seed=17, scale=scale)
        scores[scale] = spread_of(videos, prompts).diversity(reference)
    values = [scores[s]["diversity"] for s in (1.0, 0.75, 0.5, 0.25)]
    assert all(a > b + 0.1 for a, b in zip(values, values[1:])), scores
    assert 0.35 < scores[0.5]["diversity"] < 0.7 and 0.35 < scores[0.5]["position"] < 0.65, scores


def test_one_video_per_prompt_is_not_applicable() -> None:
    res = ToyBench().evaluate(render_batch(CAPTIONS, 0), PROMPTS)
    assert res.overall["diversity"] is None and res.spread is None and "repeat >= 2" in res.undefined
    saved = json.loads(json.dumps(res.to_json()))["diversity"]
    assert saved["diversity"] is None and saved["spread"] is None and "repeat >= 2" in saved["undefined"]
    header, _, row = format_table({"teacher": {**res.overall, "steps": 50}}).splitlines()
    assert header == "| model | steps | semantic | quality | diversity | colour | shape | motion |"
    assert row.startswith("| teacher | 50 | 1.000 | ") and "| n/a |" in row


def test_unreadable_videos_are_left_out_and_counted() -> None:
    videos = render_batch(CAPTIONS[:2] * 3, 0)
    videos[[2, 3, 5]] = 0  # prompt 0 keeps 2 readable videos (indices 0, 4), prompt 1 one (1)
    prompts = [PROMPTS[0], PROMPTS[1]] * 3
    spread = spread_of(videos, prompts)
    assert (spread.prompts, spread.videos) == (1, 2)
    geo = geometry_batch(videos[[0, 4]]).numpy()
    assert spread.x0 == pytest.approx(abs(geo[0, 0] - geo[1, 0]) / np.sqrt(2), rel=1e-5)
    empty = oracle(torch.zeros(8, 3, 16, 16))
    assert (empty.x0, empty.y0, empty.size) == (None, None, None)


def test_frames_that_are_not_square_have_no_rendered_reference() -> None:
    videos = F.pad(render_batch(CAPTIONS[:2] * 2, 0), (0, 4))  # [4, 8, 3, 16, 20]
    res = ToyBench().evaluate(videos, [PROMPTS[0], PROMPTS[1]] * 2)
    assert res.spread is not None and res.overall["diversity"] is None and "not square" in res.undefined
