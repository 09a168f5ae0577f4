"""``vdistill preprocess``: encode real clips once with the teacher's VAE and text encoder (resumable, split by rank).

Reads a captions file as :class:`~vdistill.data.videos.VideoClips` does (CSV / TSV / JSONL, ``--path-column``,
``--caption-column`` or ``--path-format``, videos under ``--video-root``), decodes one clip per row (``--frames``
x ``--height`` x ``--width`` at ``--fps``; default: the teacher's own) and writes the latents and text conditioning
into ``--out`` (:mod:`vdistill.preprocess.writer`). Train on it with ``data: {class_path: LatentClips,
init_args: {root: CACHE}}``: the fit then runs neither the VAE encoder nor the text encoder.

``--dtype`` is the STORAGE dtype of the cache, ``--model-dtype`` the teacher's compute dtype (as ``vdistill
synth``). Rerun the same command to resume after a crash; ``RANK`` / ``WORLD_SIZE`` (or ``--rank`` /
``--world-size``) split the shards between processes, e.g. ``torchrun --nproc-per-node 8 -m vdistill.cli preprocess
... --device cuda`` (each rank uses ``cuda:LOCAL_RANK``).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from vdistill.backbones.io import SHIPPED, dtype_name, load_backbone
from vdistill.commands.parse_errors import CommandParser
from vdistill.commands.sample import SIZE_FLAGS, add_size_arguments, check_int, check_size_arguments
from vdistill.data.decode import ClipSpec
from vdistill.data.videos import VideoClipDataset, check_captions_file, format_fields
from vdistill.errors import UserError
from vdistill.preprocess.writer import preprocess
from vdistill.sampling.generate import video_size


def build_parser() -> argparse.ArgumentParser:
    # exit_on_error=False: a bad value is an ArgumentError that the CLI prints as one line (exit status 2)
    p = CommandParser(prog="vdistill preprocess", description=__doc__, exit_on_error=False)
    p.add_argument("--model", help=f"the teacher: {', '.join(SHIPPED)}, a diffusers pipeline folder "
                   "(model_index.json), an exported folder or .ckpt")
    p.add_argument("--videos", help="the captions file (.csv, .tsv, .jsonl): a video path and a caption "
                   "per row")
    p.add_argument("--video-root", default=None, help="folder of the videos (default: the captions file's folder); "
                   "paths must stay inside it")
    p.add_argument("--path-column", default="path", help="column of the video path (OpenVid-1M: video)")
    p.add_argument("--caption-column", default="caption", help="column of the caption (WebVid: name)")
    p.add_argument("--path-format", default=None, help="build the path from columns, e.g. '{page_dir}/{videoid}.mp4' "
                   "(WebVid)")
    p.add_argument("--out", help="cache folder (rerun the same command to resume)")
    add_size_arguments(p)
    p.add_argument("--fps", type=float, default=None, help="frames per second the clip is sampled at (default: the "
                   "teacher's, e.g. Wan 16, ModelScope 8)")
    p.add_argument("--stride", type=int, default=None, help="sample every STRIDE-th source frame instead of "
                   "--fps")
    p.add_argument("--first-frame", action="store_true", help="start every clip at its first frame (default: at "
                   "VideoClips' seeded random frame of epoch 0)")
    p.add_argument("--seed", type=int, default=0, help="seeds the clips' start frames (VideoClips' data seed)")
    p.add_argument("--model-dtype", default=None, help="the teacher's compute dtype: float32, bfloat16, float16 "
                   "(default: its own; float32 for a diffusers folder); --dtype is the cache's storage dtype")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"],
                   help="storage dtype of the cache's float tensors")
    p.add_argument("--shard-size", type=int, default=64, help="clips per shard file (the unit of resuming)")
    p.add_argument("--batch-size", type=int, default=1, help="clips per VAE encode")
    p.add_argument("--workers", type=int, default=4, help="processes decoding videos (0: in this process)")
    p.add_argument("--rank", type=int, default=int(os.environ.get("RANK", 0)), help="this process (env RANK)")
    p.add_argument("--world-size", type=int, default=int(os.environ.get("WORLD_SIZE", 1)),
                   help="processes splitting the clips (env WORLD_SIZE)")
    p.add_argument("--device", default="cpu", help="where the VAE and text encoder run (cuda: cuda:LOCAL_RANK)")
    p.add_argument("--quiet", action="store_true", help="no progress bar and no summary")
    return p


def check_arguments(args: argparse.Namespace) -> None:
    """Everything that can be checked before the teacher is loaded, in one line each."""
    missing = [f"--{name}" for name in ("model", "videos", "out") if getattr(args, name) is None]
    if missing:  # checked here, not by argparse: its "required" error prints the whole usage, not one line
        raise UserError(f"vdistill preprocess needs {', '.join(missing)} (the teacher, the captions file and the "
                        "cache folder)")
    if not 0 <= args.rank < args.world_size:
        raise UserError(f"rank {args.rank} is outside world size {args.world_size}")
    for flag, least in (("stride", 1), ("shard_size", 1), ("batch_size", 1), ("workers", 0)):
        check_int(getattr(args, flag), f"--{flag.replace('_', '-')}", least, optional=flag == "stride")
    if args.fps is not None and not args.fps > 0:
        raise UserError(f"--fps is {args.fps}; it must be > 0")
    if args.fps is not None and args.stride is not None:
        raise UserError(f"--fps ({args.fps:g}) and --stride ({args.stride}): give one of them")
    check_size_arguments(args)
    check_captions_file(Path(args.videos))
    if args.path_format is not None:
        format_fields(args.path_format)


def run(argv: list[str]) -> dict:
    """Parse and check the arguments (before the teacher is loaded), read the captions file, load the teacher,
    encode."""
    args = build_parser().parse_args(argv)
    check_arguments(args)
    device = args.device
    if device == "cuda" and "LOCAL_RANK" in os.environ:
        device = f"cuda:{int(os.environ['LOCAL_RANK'])}"
    model_dtype = None if args.model_dtype is None else dtype_name(args.model_dtype)
    model = load_backbone(args.model, map_location="cpu", dtype=model_dtype)  # the encoders move to --device
    frames, height, width = video_size(model, args.frames, args.height, args.width, SIZE_FLAGS)
    fps = None if args.stride is not None else (args.fps or float(model.defaults.fps))
    spec = ClipSpec(frames, height, width, fps, args.stride or 1)
    clips = VideoClipDataset(args.videos, args.video_root, spec, args.path_column, args.caption_column,
                             args.path_format, args.seed, random_start=not args.first_frame)
    return preprocess(model, clips, args.out, shard_size=args.shard_size, batch_size=args.batch_size,
                      dtype=args.dtype, rank=args.rank, world_size=args.world_size, workers=args.workers,
                      device=device, progress=not args.quiet)
