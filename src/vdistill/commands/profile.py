"""``vdistill profile --config RECIPE [--config FRAGMENT ...]``: FLOPs and memory per rank of a recipe at its real
size, traced on the CPU without weights (see :mod:`vdistill.profile`); ``--measure`` runs the step on a GPU.

Run ``vdistill profile --help`` for the options; ``docs/profile.md`` for what each figure means and how it is got.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from vdistill.commands.parse_errors import CommandParser
from vdistill.errors import UserError

PART_ORDER = ("teacher", "student", "fake score", "discriminator", "critics", "vae", "text encoder", "other")


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = CommandParser(prog="vdistill profile", exit_on_error=False,
                                description="FLOPs and memory per rank of a distillation recipe at its real size, "
                                            "predicted on the CPU without weights")
    p.add_argument("--config", action="append", required=True, help="recipe YAML (repeat for fragments)")
    p.add_argument("--devices", type=int, help="ranks (default: trainer.devices when a number, else 8)")
    p.add_argument("--gpu-memory", type=float, default=80.0, help="GiB per GPU (default 80)")
    p.add_argument("--json", help="write the figures to this JSON file")
    p.add_argument("--measure", action="store_true", help="also run the step and sample one video of teacher and "
                   "student on the GPU (random weights)")
    p.add_argument("--measure-warmup", type=int, default=2, help="--measure: untimed steps first (default 2)")
    p.add_argument("--measure-steps", type=int, default=3, help="--measure: timed steps (default 3)")
    p.add_argument("--measure-videos", default="both", help="--measure: sample and time one video of: both "
                   "(teacher and student, default), student, none")
    p.add_argument("--measure-device", default="cuda", help="--measure: cuda (default), or cpu for a dry run at a "
                   "tiny size (wall-clock times, no peak memory or MFU)")
    p.add_argument("--teacher-config", help="a diffusers folder whose <part>/config.json files describe the teacher")
    p.add_argument("--frames", type=int, help="video frames (default: the data's, else the teacher's)")
    p.add_argument("--height", type=int, help="video height in pixels (default: the data's, else the teacher's)")
    p.add_argument("--width", type=int, help="video width in pixels (default: the data's, else the teacher's)")
    p.add_argument("--batch", type=int, help="samples per rank and step (default: data.batch_size)")
    p.add_argument("--key-indices", help="trajectory key points, e.g. 0,10,20,30,40,50 (default: the set's, else "
                                         "6 evenly over the teacher's steps)")
    args = p.parse_args(argv)
    if not (math.isfinite(args.gpu_memory) and args.gpu_memory > 0):
        raise UserError(f"--gpu-memory must be a positive number of GiB, got {args.gpu_memory:g}")
    if args.devices is not None and args.devices < 1:
        raise UserError(f"--devices must be at least 1, got {args.devices}")
    check_measure_args(args)
    return args


def check_measure_args(args: argparse.Namespace) -> None:
    from vdistill.profile.measure import VIDEO_CHOICES

    if args.measure_warmup < 0:
        raise UserError(f"--measure-warmup must be at least 0, got {args.measure_warmup}")
    if args.measure_steps < 1:
        raise UserError(f"--measure-steps must be at least 1, got {args.measure_steps}")
    if args.measure_videos not in VIDEO_CHOICES:
        raise UserError(f"--measure-videos {args.measure_videos!r}: valid choices are {', '.join(VIDEO_CHOICES)}")
    if args.measure_device not in ("cuda", "cpu"):
        raise UserError(f"--measure-device {args.measure_device!r}: valid choices are cuda, cpu")


def parse_keys(text: str | None) -> tuple[int, ...] | None:
    if not text:
        return None
    try:
        keys = tuple(int(k) for k in text.split(","))
    except ValueError:
        raise UserError(f"--key-indices {text!r}: give step indices separated by commas, e.g. 0,10,20") from None
    if len(keys) < 2 or list(keys) != sorted(set(keys)):
        raise UserError(f"--key-indices {text!r}: give at least two distinct indices in increasing order")
    return keys


def profile(args: argparse.Namespace) -> dict:
    """Every figure of the profile as a JSON-ready mapping."""
    from vdistill.profile.counter import flash_attention

    with flash_attention():
        return _profile(args)


def _profile(args: argparse.Namespace) -> dict:
    import torch

    from vdistill.profile.memory import GIB, largest_block, per_rank, unique_parameters
    from vdistill.profile.recipe import read_recipe
    from vdistill.profile.trace import build, cast_for_precision, trace_step, trace_videos

    recipe = read_recipe(args.config)
    if args.measure and args.measure_device == "cuda" and not torch.cuda.is_available():
        raise UserError("--measure runs the step on a GPU and none is available here; drop --measure for the "
                        "predicted figures")
    opts = {"frames": args.frames, "height": args.height, "width": args.width, "batch": args.batch,
            "key_indices": parse_keys(args.key_indices), "teacher_config": args.teacher_config}
    setup = build(recipe, opts)
    devices = args.devices or recipe.devices or 8
    params = unique_parameters([setup.teacher, setup.student, *setup.objectives, setup.discriminator, setup.critics])
    ema = 0.0
    if recipe.model_args.get("target_ema_decay") is not None:  # an fp32 copy of the student's trainable weights
        ema = sum(p.numel() for p in setup.student.parameters() if p.requires_grad) * 4.0
    counts = {"teacher": sum(p.numel() for p in setup.teacher.denoiser.parameters()),
              "trainable": sum(p.numel() for p in params if p.requires_grad),
              "all (each once)": sum(p.numel() for p in params)}
    for name in ("vae", "text_encoder", "text_encoder_2"):
        if getattr(setup.teacher, name, None) is not None:
            counts[name] = sum(p.numel() for p in getattr(setup.teacher, name).parameters())
    if len(setup.critics):
        counts["critics"] = sum(p.numel() for p in setup.critics.parameters())
    block = largest_block(setup.teacher.denoiser)
    sizes = {id(p): p.element_size() for p in params}  # as trained: mixed precision keeps each parameter's dtype
    cast_for_precision(setup)
    step = trace_step(setup)
    side = None
    if any(callable(getattr(o, "trains_student", None)) and not o.trains_student(1) for o in setup.objectives):
        side = trace_step(setup, student_step=False)
    mem = per_rank(recipe, params, devices, step.activations, block, ema, sizes)
    mem.activations_no_checkpointing = step.activations_no_checkpointing
    teacher_video, student_video = trace_videos(setup)
    s = setup.shape
    out = {
        "recipe": recipe.sources, "strategy": recipe.strategy_name, "precision": recipe.precision, "devices": devices,
        "accumulate_grad_batches": recipe.accumulate,
        "shape": {"batch": s.batch, "frames": s.frames, "height": s.height, "width": s.width,
                  "latent": list(setup.teacher.latent_shape(s.frames, s.height, s.width)),
                  "key_indices": list(s.key_indices) or None, "data": setup.data_kind},
        "student": {"mode": recipe.student.get("mode", "full"), "lora_rank": recipe.student.get("lora_rank"),
                    "gradient_checkpointing": bool(recipe.student.get("gradient_checkpointing"))},
        "objectives": [n for n, _ in recipe.objectives],
        "parameters": counts,
        "flops_per_step": {"forward": step.forward, "backward": step.backward,
                           "total": sum(step.forward.values()) + sum(step.backward.values())},
        "memory_per_rank_bytes": mem.as_dict(),
        "gpu_memory_gib": args.gpu_memory, "fits": mem.peak <= args.gpu_memory * GIB,
        "video": {"teacher": {**vars(teacher_video), "total": teacher_video.total},
                  "student": {**vars(student_video), "total": student_video.total},
                  "speedup_limit": teacher_video.total / max(student_video.total, 1)},
    }
    if side is not None:
        out["flops_per_side_step"] = {"forward": side.forward, "backward": side.backward,
                                      "total": sum(side.forward.values()) + sum(side.backward.values())}
    if args.measure:
        from vdistill.profile.measure import measure

        out["measured"] = measure(recipe, opts, out, args.measure_warmup, args.measure_steps, args.measure_videos,
                                  args.measure_device)
    return out


def tf(x: float) -> str:
    return f"{x / 1e12:,.1f}"


def gb(x: float | None) -> str:
    return "-" if x is None else f"{x / 1024**3:,.1f}"


def table(out: dict) -> str:
    """The profile as one plain-text table."""
    s, m, f, v = out["shape"], out["memory_per_rank_bytes"], out["flops_per_step"], out["video"]
    keys = f", key points {s['key_indices']}" if s["key_indices"] else ""
    st = out["student"]
    mode = st["mode"] + (f" rank {st['lora_rank']}" if st["mode"] == "lora" else "")
    lines = [
        f"recipe      {' + '.join(out['recipe'])}",
        f"setup       {' + '.join(out['objectives'])}; student {mode}; {out['strategy']}, {out['precision']}, "
        f"{out['devices']} ranks, accumulate {out['accumulate_grad_batches']}",
        f"sample      {s['batch']} x {s['frames']} x {s['height']} x {s['width']} per rank (latent "
        f"{' x '.join(map(str, s['latent']))}{keys}; data: {s['data']})",
        "parameters  " + ", ".join(f"{k} {n / 1e9:.3f}B" for k, n in out["parameters"].items()),
        "",
        f"{'FLOPs per training step (TFLOP)':<34}{'forward':>10}{'backward':>10}{'total':>10}",
    ]
    for part in PART_ORDER:
        a, b = f["forward"].get(part, 0), f["backward"].get(part, 0)
        if a or b:
            lines.append(f"  {part:<32}{tf(a):>10}{tf(b):>10}{tf(a + b):>10}")
    lines.append(f"  {'step':<32}{tf(sum(f['forward'].values())):>10}{tf(sum(f['backward'].values())):>10}"
                 f"{tf(f['total']):>10}")
    if "flops_per_side_step" in out:
        lines.append(f"  {'fake-score-only step (DMD2 TTUR)':<32}{'':>20}{tf(out['flops_per_side_step']['total']):>10}")
    lines += ["", "FLOPs per sampled video (TFLOP)"]
    for who in ("teacher", "student"):
        c = v[who]
        lines.append(f"  {who:<8}{c['steps']:>3} steps{' x 2 (CFG)' if c['cfg'] else '          '}"
                     f" x {tf(c['per_forward'])} + text {tf(c['text'])} + decode {tf(c['decode'])} = {tf(c['total'])}")
    lines.append(f"  speed-up limit (teacher / student FLOPs) {v['speedup_limit']:.1f}x")
    fits = "fits" if out["fits"] else "does NOT fit"
    lines += ["", "Memory per rank (GiB)",
              f"  weights {gb(m['weights'])}, gradients {gb(m['gradients'])}, optimizer {gb(m['optimizer'])}, "
              f"buffers {gb(m['buffers'])}" + (f", EMA of the student {gb(m['ema'])}" if m["ema"] else ""),
              f"  activations {gb(m['activations'])} (without gradient checkpointing: "
              f"{gb(m['activations_no_checkpointing'])})",
              f"  predicted peak {gb(m['peak'])} GiB: {fits} {out['gpu_memory_gib']:g} GiB"]
    if "measured" in out:
        r = out["measured"]
        mfu = "no peak known for this device" if r["mfu"] is None else f"MFU {r['mfu']:.1%} of {r['peak_tflops']:g}"
        lines += ["", f"Measured on {r['device']} (one rank, unsharded, random weights, AdamW; "
                      f"{r['timed_steps']} steps after {r['warmup_steps']} warm-up)",
                  f"  step {r['step_s']:.3f} s, {r['tflops']:.3g} TFLOP/s, {mfu}; peak memory "
                  + ("not known on the CPU" if r["peak_bytes"] is None else f"{gb(r['peak_bytes'])} GiB")]
        if "videos" in r:
            lines += measured_videos(r["videos"], v["speedup_limit"])
    return "\n".join(lines)


def measured_videos(videos: dict, limit: float) -> list[str]:
    """The measured seconds per video and speed-up beside the FLOPs' limit."""
    lines = [f"  one video each (text encoding + denoising + VAE decode, after a warm-up video of "
             f"{videos['warmup_denoising_steps']} denoising step)"]
    for who in ("teacher", "student"):
        if who in videos:
            c = videos[who]
            cfg = f", CFG {c['cfg']:g}" if c["cfg"] != 1 else ""
            lines.append(f"  {who:<8}{c['steps']:>3} steps{cfg}: {c['seconds']:.2f} s per video "
                         f"({c['tflops']:.3g} TFLOP/s)")
    if "speedup" in videos:
        lines.append(f"  speed-up {videos['speedup']:.1f}x measured (limit {limit:.1f}x from the FLOPs)")
    return lines


def run(argv: list[str]) -> None:
    args = parse_args(argv)
    out = profile(args)
    print(table(out))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
