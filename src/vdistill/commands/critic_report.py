"""``vdistill critic-report --critic NAME [--checkpoint FILE] [--samples videos.npz ...]``: how well a critic reads
the toy world (:mod:`vdistill.critics.report`), printed as JSON.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from vdistill.commands.parse_errors import CommandParser
from vdistill.critics import load_critic
from vdistill.critics.report import critic_report, real_videos
from vdistill.files import atomic_write_text
from vdistill.sampling.video_io import load_npz


def run(argv: list[str]) -> None:
    """``vdistill critic-report``: print (and optionally save) :func:`critic_report` for one critic."""
    parser = CommandParser(prog="vdistill critic-report",
                           description="how well a critic ranks toy captions and tracks the toy oracle")
    parser.add_argument("--critic", required=True, help="registered critic name, e.g. toy-image, toy-video")
    parser.add_argument("--checkpoint", default="shipped", help="weights file, or 'shipped' (default)")
    parser.add_argument("--samples", nargs="*", default=[], help="videos.npz files (vdistill sample) to correlate")
    parser.add_argument("--per-caption", type=int, default=20, help="real videos per caption (default 20)")
    parser.add_argument("--json", help="also write the report here")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    critic = load_critic(args.critic, checkpoint=args.checkpoint)
    videos, prompts = real_videos(args.per_caption)
    report = critic_report(critic, videos, prompts, {path: load_npz(path) for path in args.samples})
    text = json.dumps(_nan_as_null(report), indent=2, allow_nan=False)
    print(text)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.json, text + "\n")


def _nan_as_null(obj: object) -> object:
    """A correlation with a constant vector is undefined (NaN), which JSON cannot hold: ``null``."""
    if isinstance(obj, dict):
        return {k: _nan_as_null(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_nan_as_null(v) for v in obj]
    return None if isinstance(obj, float) and math.isnan(obj) else obj
