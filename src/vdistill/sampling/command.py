"""``vdistill sample``: sample a model on a prompt list and write videos, a GIF grid and (toy world) ToyBench."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from vdistill.backbones.io import SHIPPED, load_backbone
from vdistill.data.prompts import load_prompts
from vdistill.sampling.generate import Generated, generate
from vdistill.sampling.video_io import save_npz, write_gif_grid, write_mp4
from vdistill.world.captions import parse_caption
from vdistill.world.toybench import evaluate, format_table


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vdistill sample", description=__doc__)
    p.add_argument("--model", required=True,
                   help=f"a shipped model ({', '.join(SHIPPED)}), an exported folder or a .ckpt checkpoint")
    p.add_argument("--steps", type=int, default=None, help="solver steps (default: the model's own)")
    p.add_argument("--prompts", default="toy", help="'toy' (the 48 toy captions) or a text file, one prompt a line")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--cfg", type=float, default=None, help="classifier-free guidance scale (1 = off; default: model's)")
    p.add_argument("--guidance", type=float, default=None, help="embedded guidance scale (students with the LCM "
                   "guidance embedding)")
    p.add_argument("--seed", type=int, default=0, help="prompt i uses noise seed SEED + i")
    p.add_argument("--repeat", type=int, default=1, help="videos per prompt")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--mp4", type=int, default=16, help="write an mp4 for the first N videos (-1: all)")
    p.add_argument("--device", default="cpu")
    return p


def write_outputs(gen: Generated, out: Path, fps: int, mp4: int = 16, label: str = "") -> dict | None:
    """Write ``videos.npz``, mp4s, ``grid.gif`` and, when every prompt is a toy caption, ``toybench.json``.
    Returns the ToyBench overall row (or ``None``)."""
    out.mkdir(parents=True, exist_ok=True)
    save_npz(out / "videos.npz", gen.videos, gen.prompts)
    n_mp4 = len(gen.prompts) if mp4 < 0 else min(mp4, len(gen.prompts))
    for i in range(n_mp4):
        slug = re.sub(r"[^a-z0-9]+", "_", gen.prompts[i].lower()).strip("_")[:60] or "empty"
        write_mp4(out / "mp4" / f"{i:04d}_{slug}.mp4", gen.videos[i], fps=fps)
    write_gif_grid(out / "grid.gif", gen.videos[:48], ncols=12, fps=fps)
    if all(parse_caption(p) is not None for p in gen.prompts):
        res = evaluate(gen.videos, gen.prompts)
        payload = {"label": label, "seconds": gen.seconds, **res.to_json()}
        (out / "toybench.json").write_text(json.dumps(payload, indent=2))
        return res.overall
    return None


def run(argv: list[str]) -> None:
    args = build_parser().parse_args(argv)
    prompts = load_prompts(args.prompts, repeat=args.repeat)
    model = load_backbone(args.model, map_location=args.device)
    steps = args.steps or model.defaults.steps
    cfg = model.defaults.cfg if args.cfg is None else args.cfg
    gen = generate(model, prompts, steps=steps, cfg=cfg, guidance=args.guidance, seed=args.seed,
                   batch_size=args.batch_size)
    out = Path(args.out)
    overall = write_outputs(gen, out, fps=model.defaults.fps, mp4=args.mp4, label=args.model)
    print(f"{len(prompts)} videos from {args.model} ({steps} steps, cfg {cfg}) in {gen.seconds:.2f} s "
          f"({gen.seconds / len(prompts) * 1000:.1f} ms per video) -> {out}")
    if overall is not None:
        row = {**overall, "steps": steps, "cfg": cfg, "time (s)": gen.seconds}
        print(format_table({args.model: row}))
