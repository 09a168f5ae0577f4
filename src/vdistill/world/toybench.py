"""ToyBench: semantic, quality and diversity of generated toy videos against their prompts, read by the oracle.

The toy counterpart of VBench's two headline numbers: **semantic** is the mean of the colour, shape and motion
accuracies (does the video show what the prompt asks?), **quality** the oracle's pixel quality (clean, steady
object). Both are reported overall and per prompt; ``format_table`` renders several runs side by side.

**diversity** asks whether a model's seeds still vary what the renderer varies (a mode-seeking student may draw
one clip per prompt whatever its noise). The renderer jitters each clip's start position and size (and its
travel); the oracle reads the start position ``(x0, y0)`` and the size from the pixels
(:func:`~vdistill.world.oracle.geometry_batch`). The **spread** of a set of videos is, per attribute, the pooled
within-prompt standard deviation ``sqrt(sum_p sum_i (a_pi - mean_p)^2 / sum_p (n_p - 1))`` over the prompts'
readable videos: of ``x0`` and ``y0`` (fractions of the frame; ``position`` is the root of their summed
variances, so it does not depend on the direction of motion) and of ``log(size)`` (a relative spread, so a blur
or a model that draws every object a little larger, which scales all sizes alike, keeps its spread). A pooled
variance with ``n_p - 1`` degrees of freedom is unbiased for any number of seeds per prompt, so 4 seeds and 8
estimate the same spread (a mean of per-prompt standard deviations shrinks with fewer seeds, by ~8% at 4). Then,
against a reference spread,

    diversity = (position / reference position + size / reference size) / 2

1.0: the reference's variety; 0: the same clip for every seed; every jitter range halved: ~0.5. The reference is
the teacher's own spread when one is given (``vdistill bench`` uses its ``reference`` row), else that of the data
the teachers learnt: :data:`REFERENCE_CLIPS` clips per prompt rendered for the same prompts and video size
(render seed :data:`REFERENCE_SEED`), read by the same oracle, so rasterisation and the estimator's own noise
cancel. Its standard error is a jackknife over prompts, paired with the reference (:meth:`Spread.diversity`).
With one readable video per prompt (``repeat: 1``) diversity is undefined: ``None`` in JSON, ``n/a`` in tables.
Pixel noise read as an object scatters too, so diversity is read beside semantic and quality, never alone.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from torch import Tensor

from vdistill.errors import UserError
from vdistill.world.captions import Caption, parse_caption
from vdistill.world.oracle import OracleReading, geometry_batch, oracle_batch
from vdistill.world.render import WorldConfig, render_batch

ATTRIBUTES = ("colour", "shape", "motion")
# Column order of the tables: the two headline numbers first, then what the semantic score is made of;
# "diversity" follows "quality" in the tables of rows that have it.
METRICS = ("semantic", "quality", "colour", "shape", "motion")
#: rendered clips per prompt that estimate the data's spread (relative error ~2% over the 48 toy prompts)
REFERENCE_CLIPS = 32
#: the render seed of those clips (away from the small seeds that tests and datasets start at)
REFERENCE_SEED = 7_340_033
DATA_REFERENCE = f"rendered clips ({REFERENCE_CLIPS} per prompt, render seed {REFERENCE_SEED})"


@dataclass(frozen=True)
class Spread:
    """Pooled within-prompt standard deviations (module docstring) of the start position (fractions of the frame)
    and of the log of the size, over ``prompts`` prompts with >= 2 readable videos holding ``videos`` in all.

    ``groups[prompt]`` keeps each prompt's sums of squared deviations ``[3]`` (x0, y0, log size) and degrees of
    freedom, for the jackknife over prompts in :meth:`diversity`.
    """

    x0: float
    y0: float
    size: float
    prompts: int
    videos: int
    groups: Mapping[str, tuple[np.ndarray, int]] = field(default_factory=dict, repr=False, compare=False)

    @property
    def position(self) -> float:
        """Spread of the 2-D start position: the root of the summed pooled variances of ``x0`` and ``y0``."""
        return math.hypot(self.x0, self.y0)

    def diversity(self, reference: Spread) -> dict[str, float | None] | None:
        """``{diversity, position, size, se}``: this spread over ``reference``'s (``None`` if the reference's is 0).

        ``se``: the jackknife standard error of ``diversity`` over the prompts both spreads share, each left out of
        both at once (paired: a prompt that varies more in both cancels), ``sqrt((n-1)/n sum (d_-p - d_.)^2)``;
        ``None`` with fewer than two shared prompts.
        """
        ratios = _ratios(self.groups, reference.groups, ())
        if ratios is None:
            return None
        shared = [p for p in self.groups if p in reference.groups]
        leave_out = [_ratios(self.groups, reference.groups, (p,)) for p in shared]
        values = np.array([(r[0] + r[1]) / 2 for r in leave_out if r is not None])
        n = len(values)
        se = math.sqrt((n - 1) / n * ((values - values.mean()) ** 2).sum()) if n >= 2 else None
        return {"diversity": (ratios[0] + ratios[1]) / 2, "position": ratios[0], "size": ratios[1], "se": se}

    def to_json(self) -> dict[str, float | int]:
        return {"x0": self.x0, "y0": self.y0, "position": self.position, "size": self.size,
                "prompts": self.prompts, "videos": self.videos}


def _ratios(groups: Mapping[str, tuple[np.ndarray, int]], reference: Mapping[str, tuple[np.ndarray, int]],
            leave_out: tuple[str, ...]) -> tuple[float, float] | None:
    """(position, size) spread ratios of ``groups`` over ``reference`` without the prompts ``leave_out``."""
    pooled = []
    for g in (groups, reference):
        kept = [v for p, v in g.items() if p not in leave_out]
        dof = sum(d for _, d in kept)
        if dof == 0:
            return None
        var = sum(sq for sq, _ in kept) / dof  # [3]
        pooled.append((math.sqrt(var[0] + var[1]), math.sqrt(var[2])))
    if pooled[1][0] <= 0 or pooled[1][1] <= 0:
        return None
    return pooled[0][0] / pooled[1][0], pooled[0][1] / pooled[1][1]


def measure_spread(geometry: Tensor | np.ndarray, prompts: Sequence[str]) -> Spread | None:
    """The :class:`Spread` of videos whose ``(x0, y0, size)`` rows ``[N, 3]`` (NaN: unreadable) belong to ``prompts``
    (one per video); ``None`` when no prompt has two readable videos."""
    geo = np.array(geometry, dtype=np.float64)
    geo[:, 2] = np.log(geo[:, 2])
    rows_of: dict[str, list[int]] = {}
    for i, prompt in enumerate(prompts):
        if not np.isnan(geo[i]).any():
            rows_of.setdefault(prompt, []).append(i)
    groups = {p: (((geo[r] - geo[r].mean(axis=0)) ** 2).sum(axis=0), len(r) - 1)
              for p, r in rows_of.items() if len(r) >= 2}
    dof = sum(d for _, d in groups.values())
    if dof == 0:
        return None
    x0, y0, size = np.sqrt(sum(sq for sq, _ in groups.values()) / dof)
    return Spread(float(x0), float(y0), float(size), len(groups), dof + len(groups), groups)


def spread_of(videos: Tensor | np.ndarray, prompts: Sequence[str]) -> Spread | None:
    """:func:`measure_spread` of videos in either :func:`as_float_videos` layout, read by the oracle."""
    x = as_float_videos(videos)
    return measure_spread(torch.cat([geometry_batch(x[i : i + 1024]) for i in range(0, len(x), 1024)]), prompts)


def data_spread(prompts: Sequence[str], num_frames: int, height: int, width: int) -> Spread | None:
    """The spread of :data:`REFERENCE_CLIPS` rendered clips of each distinct toy prompt at this video size;
    ``None`` for frames that are not square (the renderer draws square frames)."""
    if height != width:
        return None
    return _data_spread(tuple(dict.fromkeys(prompts)), num_frames, height)


@lru_cache(maxsize=8)
def _data_spread(prompts: tuple[str, ...], num_frames: int, size: int) -> Spread | None:
    captions = [_parse(p) for p in prompts for _ in range(REFERENCE_CLIPS)]
    videos = render_batch(captions, REFERENCE_SEED, WorldConfig(num_frames=num_frames, size=size))
    return spread_of(videos, [p for p in prompts for _ in range(REFERENCE_CLIPS)])


@dataclass
class ToyBenchResult:
    """``overall``: ``{colour, shape, motion, semantic, quality, diversity: float, n: int}`` (``diversity``
    ``None`` when undefined); ``per_prompt[prompt]``: the same but ``diversity``.

    ``readings`` holds the oracle's reading of each video, in input order, ``scores`` its ``METRICS`` ``[N, 5]``
    (for paired comparisons: :func:`paired_difference`); ``spread`` the videos' spread,
    ``reference`` the reference's, named by ``reference_label``; ``diversity`` is ``Spread.diversity``'s
    ``{diversity, position, size}`` or ``None``, with the reason in ``undefined``.
    """

    overall: dict[str, float | int | None]
    per_prompt: dict[str, dict[str, float | int]]
    readings: list[OracleReading] = field(default_factory=list, repr=False)
    scores: np.ndarray | None = field(default=None, repr=False)
    spread: Spread | None = None
    reference: Spread | None = None
    reference_label: str = DATA_REFERENCE
    diversity: dict[str, float] | None = None
    undefined: str | None = None

    def to_json(self) -> dict[str, Any]:
        """Plain dicts of floats and ints, ready for ``json.dump``."""
        record: dict[str, Any] = {**(self.diversity or {"diversity": None}), "reference": self.reference_label,
                                  "spread": self.spread and self.spread.to_json(),
                                  "reference_spread": self.reference and self.reference.to_json()}
        if self.undefined:
            record["undefined"] = self.undefined
        return {"overall": dict(self.overall), "per_prompt": {p: dict(s) for p, s in self.per_prompt.items()},
                "diversity": record}


@dataclass
class ToyBench:
    """Scores toy videos with the oracle; ``batch_size`` videos at a time bound the memory."""

    batch_size: int = 1024

    def evaluate(self, videos: Tensor | np.ndarray, prompts: Sequence[str], reference: Spread | None = None,
                 reference_label: str | None = None) -> ToyBenchResult:
        """Score ``videos`` against ``prompts`` (one per video; repeats average per prompt).

        Args:
            videos: ``[N, T, 3, H, W]`` float in [0, 1], or ``[N, T, H, W, 3]`` uint8 as stored by ``save_npz``.
            prompts: the N toy captions, e.g. ``"a red circle moving left"``.
            reference: the spread that diversity is relative to, e.g. the teacher's ``result.spread``, named by
                ``reference_label``; ``None``: the data's (rendered clips, :func:`data_spread`).
        """
        x = as_float_videos(videos)
        if len(x) == 0:
            raise UserError("ToyBench got no videos")
        if len(prompts) != len(x):
            raise UserError(f"got {len(x)} videos but {len(prompts)} prompts; need one prompt per video")
        captions = [_parse(p) for p in prompts]
        readings = [r for i in range(0, len(x), self.batch_size) for r in oracle_batch(x[i : i + self.batch_size])]
        scores = np.array([_video_scores(r, c) for r, c in zip(readings, captions)])  # [N, len(METRICS)]
        groups: dict[str, list[int]] = {}  # prompt -> video indices, in first-appearance order
        for i, prompt in enumerate(prompts):
            groups.setdefault(prompt, []).append(i)
        per_prompt = {prompt: _aggregate(scores[rows]) for prompt, rows in groups.items()}
        geometry = [(r.x0, r.y0, r.size) if r.size is not None else (math.nan,) * 3 for r in readings]
        spread = measure_spread(np.array(geometry, dtype=np.float64).reshape(-1, 3), prompts)
        if reference is None:  # the rendered clips' spread; not rendered when this set has none to compare
            reference_label = DATA_REFERENCE
            reference = data_spread(prompts, x.shape[1], x.shape[3], x.shape[4]) if spread is not None else None
        diversity, undefined = relative_diversity(spread, reference)
        overall = {**_aggregate(scores), "diversity": diversity and diversity["diversity"]}
        return ToyBenchResult(overall=overall, per_prompt=per_prompt, readings=readings, scores=scores, spread=spread,
                              reference=reference, reference_label=reference_label or "given", diversity=diversity,
                              undefined=undefined)


def paired_difference(scores: np.ndarray, base: np.ndarray, metric: str) -> tuple[float, float]:
    """``(mean, standard error)`` of the per-video difference ``scores - base`` of one of ``METRICS``: two sets of
    ``ToyBenchResult.scores`` ``[N, 5]`` of the same prompts and seeds, video for video (``vdistill bench`` rows).
    Pairing removes what the prompt and the noise do to both, so the error is that of the difference itself:
    ``std(d, ddof=1) / sqrt(N)`` (0 with one video)."""
    if scores.shape != base.shape:
        raise UserError(f"paired scores need the same videos: got {scores.shape[0]} and {base.shape[0]}")
    d = scores[:, METRICS.index(metric)] - base[:, METRICS.index(metric)]
    se = float(d.std(ddof=1) / math.sqrt(len(d))) if len(d) > 1 else 0.0
    return float(d.mean()), se


def relative_diversity(spread: Spread | None, reference: Spread | None) -> tuple[dict[str, float] | None, str | None]:
    """``(spread.diversity(reference), None)``, or ``(None, why it is undefined)``."""
    if spread is None:
        return None, "fewer than two readable videos per prompt (repeat >= 2 measures diversity)"
    if reference is None:
        return None, "no reference spread (the reference has fewer than two readable videos per prompt, or the " \
            "frames are not square and no clips are rendered)"
    diversity = spread.diversity(reference)
    return diversity, None if diversity else "the reference's spread is 0 (one clip for every seed)"


def as_float_videos(videos: Tensor | np.ndarray) -> Tensor:
    """Videos ``[N, T, 3, H, W]`` float32 in [0, 1] from that layout, or from uint8 ``[N, T, H, W, 3]``."""
    x = torch.as_tensor(videos)
    if x.dtype == torch.uint8:
        if x.ndim != 5 or x.shape[-1] != 3:
            raise UserError(f"expected uint8 videos [N, T, H, W, 3], got shape {tuple(x.shape)}")
        return x.permute(0, 1, 4, 2, 3).float() / 255
    if x.ndim != 5 or x.shape[2] != 3:
        raise UserError(f"expected float videos [N, T, 3, H, W] in [0, 1], got shape {tuple(x.shape)}")
    return x.float()


def evaluate(videos: Tensor | np.ndarray, prompts: Sequence[str]) -> ToyBenchResult:
    """``ToyBench().evaluate(videos, prompts)``."""
    return ToyBench().evaluate(videos, prompts)


def format_table(
    rows: Mapping[str, Mapping[str, Any]],
    extra_columns: Sequence[str | tuple[str, str]] | None = None,
    lead_columns: Sequence[str | tuple[str, str]] = ("steps", "cfg", "guidance"),
    name_header: str = "model",
) -> str:
    """A Markdown table with one row per named result: name, ``lead_columns``, ``METRICS``, ``extra_columns``.

    Args:
        rows: ``{name: {key: value}}``, e.g. ``{"teacher 50 steps": {**result.overall, "steps": 50, "time (s)": 9.1}}``.
        extra_columns: keys shown after the metrics; ``None``: every other key of the rows (but ``n``), in order
            of appearance. A ``(key, header)`` pair renames a column, e.g. ``("seconds", "time (s)")``.
        lead_columns: keys shown between the name and the metrics, when some row has them.
        name_header: header of the first column.

    ``diversity``, when some row has it, follows ``quality``. Floats print with 3 decimals, a key a row lacks as
    ``-``, a key it has with the value ``None`` (undefined, e.g. diversity with one video per prompt) as ``n/a``.
    The default gives ``| model | steps | semantic | quality | colour | shape | motion | time (s) |`` for the rows
    above.
    """
    present = list(dict.fromkeys(k for row in rows.values() for k in row))
    lead = [c for c in map(_column, lead_columns) if c[0] in present]
    metrics = list(METRICS[:2]) + (["diversity"] if "diversity" in present else []) + list(METRICS[2:])
    if extra_columns is None:
        shown = {*metrics, "n", *(key for key, _ in lead)}
        extra = [(k, k) for k in present if k not in shown]
    else:
        extra = [_column(c) for c in extra_columns]
    columns = lead + [(m, m) for m in metrics] + extra
    lines = [
        "| " + " | ".join([name_header] + [header for _, header in columns]) + " |",
        "| --- | " + " | ".join("---:" for _ in columns) + " |",
    ]
    for name, row in rows.items():
        cells = [_cell(row[key]) if key in row else "-" for key, _ in columns]
        lines.append("| " + " | ".join([str(name), *cells]) + " |")
    return "\n".join(lines)


def _parse(prompt: str) -> Caption:
    caption = parse_caption(prompt)
    if caption is None:
        raise UserError(
            f"prompt {prompt!r} is not a toy caption; ToyBench needs 'a {{colour}} {{shape}} moving {{direction}}'"
            " (see vdistill.world.toy_prompts())"
        )
    return caption


def _video_scores(reading: OracleReading, caption: Caption) -> list[float]:
    """One video's ``METRICS`` in order: semantic, quality, colour, shape, motion (each 0/1 for attributes)."""
    correct = reading.correct(caption)
    attributes = [float(correct[a]) for a in ATTRIBUTES]
    return [sum(attributes) / len(attributes), reading.quality, *attributes]


def _aggregate(scores: np.ndarray) -> dict[str, float | int]:
    """Mean of per-video ``scores`` ``[n, len(METRICS)]`` as ``{colour, shape, motion, semantic, quality, n}``."""
    mean = dict(zip(METRICS, (float(v) for v in scores.mean(axis=0))))
    keys = (*ATTRIBUTES, "semantic", "quality")
    return {**{k: mean[k] for k in keys}, "n": int(len(scores))}


def _column(spec: str | tuple[str, str]) -> tuple[str, str]:
    return (spec, spec) if isinstance(spec, str) else (spec[0], spec[1])


def _cell(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, (bool, int, np.integer)):
        return str(value)
    if isinstance(value, (float, np.floating)):
        return f"{value:.3f}"
    return str(value)
