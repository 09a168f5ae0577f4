"""``vdistill sample``: sample a model on a prompt list and write videos, a GIF grid and (toy world) ToyBench.

The model is a shipped name, a diffusers pipeline folder (``model_index.json``: Wan2.1, ModelScope T2V), an
exported folder or a ``.ckpt``; ``--dtype`` sets its denoiser's dtype and ``--frames --height --width`` the video
size (default: the model's own, e.g. Wan's 81 x 480 x 832), as its steps and CFG scale default to its own.

The arguments and the prompt file are checked before the model is loaded (one line, exit 2), the video size
against the model's family once it is loaded, before anything is sampled.

The writers are sized for real videos (:mod:`vdistill.sampling.video_io`): mp4s at the video's own size (tiny
videos upscaled), streamed to the encoder frame by frame; ``grid.gif`` downscaled to at most 16 Mpx over all its
frames; ``videos.npz`` (the arrays that ``critic-report`` and later evaluations read) only while the videos are
small with ``--npz auto`` (:data:`~vdistill.sampling.video_io.NPZ_AUTO_BYTES`), always or never on request.

Everything (``videos.npz``, ``mp4/``, ``grid.gif``, ``toybench.json``) is written into a temporary folder beside
``--out`` and swapped in at the end (:func:`vdistill.files.atomic_folder`): a run that fails (a full disk, Ctrl-C,
a writer's error) leaves an earlier ``--out`` complete and unchanged, and no half-written folder. As ``--out`` is
replaced as a whole, a folder holding anything else is refused up front.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from vdistill.backbones.io import SHIPPED, dtype_name, load_backbone
from vdistill.commands.parse_errors import CommandParser
from vdistill.data.prompts import check_repeat, load_prompts
from vdistill.errors import UserError
from vdistill.files import atomic_folder, check_replaceable
from vdistill.sampling.generate import Generated, denoiser_dtype, generate, video_size
from vdistill.sampling.video_io import (
    NPZ_AUTO_BYTES,
    check_npz,
    save_npz,
    videos_nbytes,
    wants_npz,
    write_gif_grid,
    write_mp4,
)
from vdistill.world.captions import parse_caption
from vdistill.world.toybench import ToyBenchResult, evaluate, format_table

#: what an output folder of ``vdistill sample`` (and of each ``vdistill bench`` row) holds
SAMPLE_FILES = ("videos.npz", "mp4", "grid.gif", "toybench.json")
#: torch generators take 64-bit seeds; prompt i uses SEED + i
SEED_END = 2**63


def check_int(value: object, what: str, minimum: int, optional: bool = False) -> int | None:
    """``value`` if it is an integer >= ``minimum`` (or ``None`` when ``optional``), else one line naming ``what``."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise UserError(f"{what} must be an integer >= {minimum}{' or unset' if optional else ''}, got {value!r}")
    return value


def check_seed(seed: object, count: int, what: str = "--seed") -> int:
    """``seed`` if the ``count`` seeds ``seed, seed + 1, ...`` are valid generator seeds."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= SEED_END - count:
        raise UserError(f"{what} must be an integer in [0, 2**63 - {count}] ({count} videos use seeds SEED to "
                        f"SEED + {count - 1}), got {seed!r}")
    return seed


def build_parser() -> argparse.ArgumentParser:
    p = CommandParser(prog="vdistill sample", description=__doc__)
    p.add_argument("--model", required=True,
                   help=f"a shipped model ({', '.join(SHIPPED)}), a diffusers pipeline folder (model_index.json), an "
                   "exported folder or a .ckpt checkpoint")
    p.add_argument("--dtype", default=None, help="dtype of the model's denoiser (and a diffusers teacher's text "
                   "encoder): float32, bfloat16, float16 (default: the model's own; float32 for a diffusers folder)")
    add_size_arguments(p)
    p.add_argument("--steps", type=int, default=None, help="solver steps >= 1 (default: the model's own)")
    p.add_argument("--prompts", default="toy", help="'toy' (the 48 toy captions) or a text file, one prompt a line")
    p.add_argument("--out", required=True, help="output folder (replaced as a whole when the run succeeds)")
    p.add_argument("--cfg", type=float, default=None, help="classifier-free guidance scale (1 = off; default: model's)")
    p.add_argument("--guidance", type=float, default=None, help="embedded guidance scale (students with the LCM "
                   "guidance embedding)")
    p.add_argument("--seed", type=int, default=0, help="prompt i uses noise seed SEED + i")
    p.add_argument("--repeat", type=int, default=1, help="videos per prompt")
    p.add_argument("--batch-size", type=int, default=32, help="videos sampled at once (default 32)")
    p.add_argument("--mp4", type=int, default=16, help="write an mp4 for the first N videos (-1: all)")
    p.add_argument("--npz", default="auto", help="write videos.npz (uint8 arrays + prompts): auto (only when the "
                   f"videos hold at most {NPZ_AUTO_BYTES // 2**20} MiB, e.g. the toy world's), always, never")
    p.add_argument("--device", default="cpu", help="torch device: cpu (default), cuda, cuda:1, ...")
    return p


def add_size_arguments(p: argparse.ArgumentParser) -> None:
    """``--frames --height --width``: the video size in pixels (default: the model's own)."""
    for flag, what in (("--frames", "frames per video"), ("--height", "video height in pixels"),
                       ("--width", "video width in pixels")):
        p.add_argument(flag, type=int, default=None, help=f"{what} (default: the model's own, e.g. Wan 81 x 480 x "
                       "832, ModelScope 16 x 256 x 256)")


def check_size_arguments(args: argparse.Namespace) -> None:
    """``--frames --height --width`` are unset or >= 1 (the family's own rules are checked once it is loaded)."""
    for flag in ("frames", "height", "width"):
        check_int(getattr(args, flag), f"--{flag}", 1, optional=True)


SIZE_FLAGS = "--frames/--height/--width"


def write_samples(gen: Generated, folder: Path, fps: int, mp4: int = 16, label: str = "",
                  npz: str = "auto") -> ToyBenchResult | None:
    """Write ``videos.npz`` (``npz``: auto, always, never; :func:`~vdistill.sampling.video_io.wants_npz`), mp4s of
    the first ``mp4`` videos, ``grid.gif`` (the first 48) and, when every prompt is a toy caption,
    ``toybench.json`` (scored from the videos in memory, with or without ``videos.npz``) into ``folder`` (in place:
    callers pass the temporary folder of :func:`~vdistill.files.atomic_folder`). Returns the ToyBench result (its
    ``overall`` row and per-video ``scores``), or ``None`` for prompts that are not toy captions."""
    if wants_npz(gen.videos, npz):
        save_npz(folder / "videos.npz", gen.videos, gen.prompts)
    elif npz == "auto":
        print(f"videos.npz not written: {len(gen.prompts)} videos of {videos_nbytes(gen.videos) / 2**20:.0f} MiB "
              f"(uint8) are over --npz auto's {NPZ_AUTO_BYTES // 2**20} MiB; --npz always writes it")
    n_mp4 = len(gen.prompts) if mp4 < 0 else min(mp4, len(gen.prompts))
    for i in range(n_mp4):
        slug = re.sub(r"[^a-z0-9]+", "_", gen.prompts[i].lower()).strip("_")[:60] or "empty"
        write_mp4(folder / "mp4" / f"{i:04d}_{slug}.mp4", gen.videos[i], fps=fps)
    write_gif_grid(folder / "grid.gif", gen.videos[:48], ncols=12, fps=fps)
    if all(parse_caption(p) is not None for p in gen.prompts):
        res = evaluate(gen.videos, gen.prompts)
        payload = {"label": label, "seconds": gen.seconds, **res.to_json()}
        (folder / "toybench.json").write_text(json.dumps(payload, indent=2))
        return res
    return None


def write_outputs(gen: Generated, out: Path, fps: int, mp4: int = 16, label: str = "",
                  npz: str = "auto") -> ToyBenchResult | None:
    """:func:`write_samples` into a temporary folder swapped in as ``out`` (module docstring)."""
    with atomic_folder(out, SAMPLE_FILES) as tmp:
        return write_samples(gen, tmp, fps, mp4=mp4, label=label, npz=npz)


def run(argv: list[str]) -> None:
    args = build_parser().parse_args(argv)
    check_int(args.steps, "--steps", 1, optional=True)
    check_int(args.batch_size, "--batch-size", 1)
    check_int(args.mp4, "--mp4", -1)
    check_npz(args.npz, "--npz")
    check_size_arguments(args)
    dtype = None if args.dtype is None else dtype_name(args.dtype)
    prompts = load_prompts(args.prompts, repeat=check_repeat(args.repeat, "--repeat"))
    check_seed(args.seed, len(prompts))
    out = Path(args.out)
    check_replaceable(out, SAMPLE_FILES, "--out")
    model = load_backbone(args.model, map_location=args.device, dtype=dtype)
    size = video_size(model, args.frames, args.height, args.width, SIZE_FLAGS)
    steps = model.defaults.steps if args.steps is None else args.steps
    cfg = model.defaults.cfg if args.cfg is None else args.cfg
    gen = generate(model, prompts, steps=steps, cfg=cfg, guidance=args.guidance, seed=args.seed,
                   batch_size=args.batch_size, num_frames=size[0], height=size[1], width=size[2])
    result = write_outputs(gen, out, fps=model.defaults.fps, mp4=args.mp4, label=args.model, npz=args.npz)
    overall = None if result is None else result.overall
    print(f"{len(prompts)} videos of {size[0]} x {size[1]} x {size[2]} from {args.model} ({steps} steps, cfg {cfg}, "
          f"{str(denoiser_dtype(model)).removeprefix('torch.')}) in {gen.seconds:.2f} s "
          f"({gen.seconds / len(prompts) * 1000:.1f} ms per video) -> {out}")
    if overall is not None:
        row = {**overall, "steps": steps, "cfg": cfg, "time (s)": gen.seconds}
        print(format_table({args.model: row}))
