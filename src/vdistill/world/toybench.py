"""ToyBench: semantic and quality scores of generated toy videos against their prompts, read by the oracle.

The toy counterpart of VBench's two headline numbers: **semantic** is the mean of the colour, shape and motion
accuracies (does the video show what the prompt asks?), **quality** the oracle's pixel quality (clean, steady
object). Both are reported overall and per prompt; ``format_table`` renders several runs side by side.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from vdistill.errors import UserError
from vdistill.world.captions import Caption, parse_caption
from vdistill.world.oracle import OracleReading, oracle_batch

ATTRIBUTES = ("colour", "shape", "motion")
# Column order of the tables: the two headline numbers first, then what the semantic score is made of.
METRICS = ("semantic", "quality", "colour", "shape", "motion")


@dataclass
class ToyBenchResult:
    """``overall`` and ``per_prompt[prompt]``: ``{colour, shape, motion, semantic, quality: float, n: int}``.

    ``readings`` holds the oracle's reading of each video, in input order.
    """

    overall: dict[str, float | int]
    per_prompt: dict[str, dict[str, float | int]]
    readings: list[OracleReading] = field(default_factory=list, repr=False)

    def to_json(self) -> dict[str, Any]:
        """Plain dicts of floats and ints, ready for ``json.dump``."""
        return {"overall": dict(self.overall), "per_prompt": {p: dict(s) for p, s in self.per_prompt.items()}}


@dataclass
class ToyBench:
    """Scores toy videos with the oracle; ``batch_size`` videos at a time bound the memory."""

    batch_size: int = 1024

    def evaluate(self, videos: Tensor | np.ndarray, prompts: Sequence[str]) -> ToyBenchResult:
        """Score ``videos`` against ``prompts`` (one per video; repeats average per prompt).

        Args:
            videos: ``[N, T, 3, H, W]`` float in [0, 1], or ``[N, T, H, W, 3]`` uint8 as stored by ``save_npz``.
            prompts: the N toy captions, e.g. ``"a red circle moving left"``.
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
        return ToyBenchResult(overall=_aggregate(scores), per_prompt=per_prompt, readings=readings)


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

    Floats print with 3 decimals, missing values as ``-``. The default gives
    ``| model | steps | semantic | quality | colour | shape | motion | time (s) |`` for the rows above.
    """
    present = list(dict.fromkeys(k for row in rows.values() for k in row))
    lead = [c for c in map(_column, lead_columns) if c[0] in present]
    if extra_columns is None:
        shown = {*METRICS, "n", *(key for key, _ in lead)}
        extra = [(k, k) for k in present if k not in shown]
    else:
        extra = [_column(c) for c in extra_columns]
    columns = lead + [(m, m) for m in METRICS] + extra
    lines = [
        "| " + " | ".join([name_header] + [header for _, header in columns]) + " |",
        "| --- | " + " | ".join("---:" for _ in columns) + " |",
    ]
    for name, row in rows.items():
        lines.append("| " + " | ".join([str(name)] + [_cell(row.get(key)) for key, _ in columns]) + " |")
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
        return "-"
    if isinstance(value, (bool, int, np.integer)):
        return str(value)
    if isinstance(value, (float, np.floating)):
        return f"{value:.3f}"
    return str(value)
