"""``vdistill synth``: write the synthetic trajectory dataset of a teacher (resumable, split by rank).

The teacher is a shipped name, a diffusers pipeline folder (``model_index.json``), an exported folder or a
``.ckpt``; ``--frames --height --width`` set the video size (default: the teacher's own). ``--dtype`` is the
STORAGE dtype of the shards (the key latents and text conditioning written to disk), so the teacher's own compute
dtype is ``--model-dtype`` (default: the teacher's own; float32 for a diffusers folder): a bfloat16 teacher may
write float32 shards and the other way round.

``vdistill synth --verify --out DIR`` checks a finished or downloaded set instead: every shard's size, header,
sha256 against its manifest and that its tensors are finite (one read of the whole set). After that, trusted
storage can skip the per-shard check of the training run (``TrajectoryData(verify=false)``).
"""

from __future__ import annotations

import argparse
import os
import time

from vdistill.backbones.io import SHIPPED, dtype_name, load_backbone
from vdistill.commands.parse_errors import CommandParser
from vdistill.commands.sample import SIZE_FLAGS, add_size_arguments, check_size_arguments
from vdistill.data.prompts import load_prompts
from vdistill.data.shards import load_manifest, verify
from vdistill.errors import UserError
from vdistill.sampling.generate import video_size
from vdistill.synth.writer import synthesize


def _indices(text: str) -> tuple[int, ...]:
    """Comma-separated step indices: at least two, non-negative, strictly increasing (the upper bound, the
    teacher's step count, is checked once the teacher is loaded, before anything is sampled)."""
    try:
        keys = tuple(int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"key indices must be comma-separated integers, got {text!r}") from None
    if len(keys) < 2 or keys[0] < 0 or any(b <= a for a, b in zip(keys, keys[1:])):
        raise argparse.ArgumentTypeError(f"give at least two non-negative, strictly increasing step indices "
                                         f"(0 = the noise, STEPS = clean), e.g. 0,25,50; got {text!r}")
    return keys


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    # exit_on_error=False: a bad value is an ArgumentError that the CLI prints as one line (exit status 2)
    p = CommandParser(prog="vdistill synth", description=__doc__, exit_on_error=False)
    p.add_argument("--model", help=f"the teacher: {', '.join(SHIPPED)}, a diffusers pipeline folder "
                   "(model_index.json), an exported folder or .ckpt (required unless --verify)")
    p.add_argument("--model-dtype", default=None, help="the teacher's compute dtype: float32, bfloat16, float16 "
                   "(default: its own; float32 for a diffusers folder); --dtype is the shards' storage dtype")
    add_size_arguments(p)
    p.add_argument("--prompts", default="toy", help="'toy' or a text file, one prompt a line")
    p.add_argument("--repeat", type=_positive, default=1, help="trajectories per prompt (seeds differ)")
    p.add_argument("--out", required=True, help="dataset folder (rerun the same command to resume)")
    p.add_argument("--key-indices", type=_indices, default=(0, 10, 20, 30, 40, 50),
                   help="step indices kept, 0 = noise, STEPS = clean (AccVideo: 0,10,20,30,40,50)")
    p.add_argument("--steps", type=_positive, default=None, help="teacher steps (default: the teacher's own)")
    p.add_argument("--cfg", type=float, default=None, help="CFG scale (default: the teacher's own)")
    p.add_argument("--guidance", type=float, default=None, help="embedded guidance scale (teachers that have one)")
    p.add_argument("--seed", type=int, default=0, help="prompt i uses noise seed SEED + i")
    p.add_argument("--shard-size", type=_positive, default=64, help="trajectories per shard file (default 64)")
    p.add_argument("--batch-size", type=_positive, default=16, help="trajectories sampled at once (default 16)")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"],
                   help="storage dtype of the shards' float tensors (not the teacher's: see --model-dtype)")
    p.add_argument("--rank", type=int, default=int(os.environ.get("RANK", 0)), help="this process (env RANK)")
    p.add_argument("--world-size", type=int, default=int(os.environ.get("WORLD_SIZE", 1)),
                   help="processes splitting the prompts (env WORLD_SIZE)")
    p.add_argument("--device", default="cpu", help="torch device: cpu (default), cuda, cuda:1, ...")
    p.add_argument("--verify", action="store_true", help="check the set in --out (hashes, finite values) instead "
                   "of synthesising")
    return p


def run(argv: list[str]) -> dict:
    """Parse and check the arguments (before the teacher is loaded), load the teacher, synthesise."""
    args = build_parser().parse_args(argv)
    if args.verify:
        return verify_set(args.out)
    if args.model is None:
        raise UserError("vdistill synth needs --model (the teacher), or --verify to check the set in --out")
    prompts = load_prompts(args.prompts, repeat=args.repeat)
    if not 0 <= args.rank < args.world_size:
        raise UserError(f"rank {args.rank} is outside world size {args.world_size}")
    check_size_arguments(args)
    model_dtype = None if args.model_dtype is None else dtype_name(args.model_dtype)
    model = load_backbone(args.model, map_location=args.device, dtype=model_dtype)
    frames, height, width = video_size(model, args.frames, args.height, args.width, SIZE_FLAGS)
    return synthesize(model, prompts, args.out, key_indices=args.key_indices, steps=args.steps, cfg=args.cfg,
                      guidance=args.guidance, seed=args.seed, shard_size=args.shard_size,
                      batch_size=args.batch_size, dtype=args.dtype, rank=args.rank, world_size=args.world_size,
                      num_frames=frames, height=height, width=width)


def verify_set(root: str) -> dict:
    """``vdistill synth --verify``: check every shard of ``root`` (progress bar), print a one-line summary."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    start = time.perf_counter()
    total = load_manifest(root)["num_samples"]
    with Progress(TextColumn("[bold]verifying"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()) as bar:
        task = bar.add_task("verifying", total=total)
        manifest = verify(root, progress=lambda n: bar.advance(task, n))
    size = sum(e["bytes"] for e in manifest["shards"])
    state = "complete" if manifest["complete"] else f"UNFINISHED ({len(manifest['shards'])} of " \
        f"{manifest['num_shards']} shards)"
    print(f"{root}: {len(manifest['shards'])} shards, {manifest['num_samples']} samples, {size / 1e9:.3f} GB "
          f"verified in {time.perf_counter() - start:.1f} s (sha256 and finite values); {state}")
    return manifest
