"""Our overhead, measured side by side in ONE process on the same reduced Wan2.1 transformer (issue 17, item 2).

    python experiments/bench/overhead.py --json runs/bench/overhead.json

Rows (ratio = bare / ours of the medians: 1.0 = no overhead; the goal is >= 0.95):

* ``train trajectory``: one ``Distillation`` training step through the Lightning Trainer (``TrajectoryGuidance``,
  full student, ``TrajectoryData`` over a set written by vdistill's ``synthesize``) against a plain PyTorch loop of
  the same math on the diffusers transformer (:mod:`bare`), interleaved step by step (:mod:`harness`);
* ``train consistency (LoRA)``: the same for ``ConsistencyDistillation`` with a LoRA student on real clips encoded
  once (``LatentClips`` over a ``vdistill preprocess`` cache of rendered toy clips), gradient norm clipped at 1;
* ``synth (in-process)``: ``vdistill synth``'s ``run(argv)`` against a bare loop of the teacher's Euler steps with
  CFG that writes the key points with safetensors; ``synth (command)``: the whole commands as processes;
* ``sample (in-process)`` / ``sample (command)``: ``vdistill sample`` of the exported trajectory student against
  ``WanPipeline.from_pretrained(export)(prompts, ...)``, the frames written with numpy; ``sample part: ...``: the
  same split into loading, text encoding, denoising and VAE decode on each side (:func:`sample_part_rows`);
* start-up: ``vdistill --help``, ``vdistill list``, ``python -c 'import torch'`` (the floor of any command that
  computes) and whether ``vdistill synth`` / ``sample`` import Lightning (``python -X importtime``).

Where a ratio is below 0.95 the script profiles ours (cProfile) and prints where the time goes. Before timing, it
checks that both sides compute the same loss from the same weights and draws. ``--quick`` runs a tiny model with
one or two steps of each (for the tests); its figures mean nothing.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bare  # noqa: E402
from harness import BareArm, Times, interleave, machine, ratio, table, write_json  # noqa: E402
from reduced_wan import BENCH, QUICK, WanSize, bench_data, wan_prompts  # noqa: E402

GOAL = 0.95
HERE = Path(__file__).resolve().parent


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def vdistill_command() -> list[str]:
    """The ``vdistill`` console script of this interpreter's environment (else ``python -m vdistill.cli``)."""
    script = Path(sys.executable).with_name("vdistill")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "vdistill.cli"]


def profile_top(fn, limit: int = 20) -> str:
    """vdistill's ``limit`` functions with the most cumulative time while ``fn()`` runs (cProfile), and the
    whole run's total."""
    prof = cProfile.Profile()
    prof.enable()
    try:
        fn()
    finally:
        prof.disable()
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("cumulative").print_stats(r"src/vdistill/", limit)
    return "\n".join(ln for ln in out.getvalue().splitlines() if ln.strip())


# -- setup ---------------------------------------------------------------------------------------------------
class Setup:
    """The reduced Wan folder, a trajectory set and a latent-clip cache under ``work`` (:func:`bench_data`)."""

    def __init__(self, work: Path, size: WanSize, quick: bool) -> None:
        data = bench_data(work, size, quick)
        self.work, self.size, self.quick = work, size, quick
        self.wan, self.traj, self.clips, self.keys = data["wan"], data["trajectories"], data["clips"], data["keys"]


def trainer(work: Path, name: str, steps: int, gate, **kwargs):
    import lightning as L

    return L.Trainer(accelerator="cpu", devices=1, max_steps=steps, log_every_n_steps=25, enable_progress_bar=False,
                     enable_model_summary=False, enable_checkpointing=False, default_root_dir=str(work / "logs" / name),
                     callbacks=[gate], **kwargs)


def preload(dataset) -> list[dict]:
    return [dataset[i] for i in range(len(dataset))]


def batch_of(items: list[dict], size: int, gen: torch.Generator) -> list[dict]:
    return [items[int(i)] for i in torch.randperm(len(items), generator=gen)[:size]]


def same(a: float, b: float, what: str) -> float:
    rel = abs(a - b) / max(abs(b), 1e-12)
    log(f"  same math, {what}: ours {b:.6g}, bare {a:.6g} (relative difference {rel:.1e})")
    if rel > 1e-4:
        raise SystemExit(f"{what}: the bare loss {a} differs from ours {b}: the two sides do not compute the same")
    return rel


def train_trajectory(setup: Setup, args, threads: int) -> tuple[dict[str, Times], dict]:
    from harness import TrainerArm, make_gate

    from vdistill.data.trajectories import TrajectoryData
    from vdistill.modules.distill import Distillation
    from vdistill.objectives import TrajectoryGuidance

    batch = args.batch
    data = TrajectoryData(str(setup.traj), batch_size=batch, num_workers=0, dtype="float32")
    module = Distillation(str(setup.wan), [TrajectoryGuidance()], lr=1e-5)
    items = preload(data.build())
    module.bind_key_timesteps(data.dataset.timesteps.tolist())
    student = bare.TrajectoryStudent(bare.load_transformer(setup.wan), lr=1e-5)
    gen = torch.Generator().manual_seed(0)

    def bare_step() -> float:
        rows = batch_of(items, batch, gen)
        return student.step(torch.stack([r["latents"] for r in rows]), torch.stack([r["timesteps"] for r in rows]),
                            torch.stack([r["text"]["states"] for r in rows]))

    from vdistill.data.trajectories import collate

    check = collate(items[:batch])
    with torch.no_grad():
        ours = float(TrajectoryGuidance()(check, module.models())["trajectory"])
        theirs = float(student.loss(check["latents"], check["timesteps"], check["text"]["states"]))
    rel = same(theirs, ours, "trajectory loss")
    gate = make_gate()
    total = args.warmup + args.steps
    arm = TrainerArm("ours", trainer(setup.work, "trajectory", total, gate), module, data, gate, threads)
    try:
        times = interleave([arm, BareArm("bare", bare_step)], args.steps, args.warmup, log)
    finally:
        arm.close()
    return times, {"same_math_relative_difference": rel, "module": module}


def train_consistency(setup: Setup, args, threads: int) -> tuple[dict[str, Times], dict]:
    from harness import TrainerArm, make_gate

    from vdistill.backbones.student import StudentConfig
    from vdistill.data.latent_clips import LatentClips
    from vdistill.modules.distill import Distillation
    from vdistill.objectives.consistency import ConsistencyDistillation, VideoBatch

    batch, rank = args.batch, args.lora_rank
    data = LatentClips(str(setup.clips), batch_size=batch, num_workers=0, dtype="float32")
    # Wan's T2V-Turbo recipe (experiments/wan/turbo_1.3b.yaml): N = 50, k = 20, w in [2, 6], online target
    objective = ConsistencyDistillation(num_ddim_timesteps=50, skip=20, w_min=2.0, w_max=6.0, guidance=4.0)
    module = Distillation(str(setup.wan), [objective], student=StudentConfig(mode="lora", lora_rank=rank,
                                                                             guidance_embedding=True), lr=1e-5)
    dataset = data.build()
    items = preload(dataset)
    uncond = dataset.uncond["states"].float()
    student = bare.ConsistencyStudent(bare.load_transformer(setup.wan), bare.flow_shift(setup.wan), lr=1e-5,
                                      rank=rank, n_grid=50, jump=1, w_range=(2.0, 6.0))
    gen = torch.Generator().manual_seed(0)

    def bare_step() -> float:
        rows = batch_of(items, batch, gen)
        return student.step(torch.stack([r["latents"] for r in rows]), torch.stack([r["text"]["states"] for r in rows]),
                            uncond)

    x0 = torch.stack([r["latents"] for r in items[:batch]])
    states = torch.stack([r["text"]["states"] for r in items[:batch]])
    n, noise, w = student.draw(x0)
    with torch.no_grad():
        clips = VideoBatch(x0=x0, text={"states": states}, uncond={"states": uncond}, prompts=[""] * batch)
        ours = float(objective.loss(clips, n, noise, w, module.models())["cd"])
        theirs = float(student.loss(x0, states, uncond, n, noise, w))
    rel = same(theirs, ours, "consistency loss")
    gate = make_gate()
    total = args.warmup + args.steps
    arm = TrainerArm("ours", trainer(setup.work, "consistency", total, gate, gradient_clip_val=1.0), module, data,
                     gate, threads)
    try:
        times = interleave([arm, BareArm("bare", bare_step)], args.steps, args.warmup, log)
    finally:
        arm.close()
    return times, {"same_math_relative_difference": rel}


# -- the commands ----------------------------------------------------------------------------------------------
def fresh(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    return path


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def reps(pairs: list[tuple[str, callable]], n: int, prepare=None) -> dict[str, Times]:
    """``n`` rounds of each ``(name, fn)`` in turn, timed, the order reversed every other round (A B, B A, ...: a
    side that gains or loses from running first or second, or from a drift of the machine, does so on both);
    ``prepare(name)`` runs untimed before each."""
    times = {name: Times(name) for name, _ in pairs}
    for r in range(n):
        for name, fn in (pairs if r % 2 == 0 else pairs[::-1]):
            if prepare is not None:
                prepare(name)
            times[name].seconds.append(timed(fn))
        log(f"  rep {r + 1}/{n}: " + ", ".join(f"{k} {v.seconds[-1]:.2f} s" for k, v in times.items()))
    return times


def synth_args(setup: Setup, args) -> dict:
    s = setup.size
    return {"steps": args.synth_steps, "keys": f"0,{args.synth_steps // 2},{args.synth_steps}", "cfg": 5.0,
            "frames": s.frames, "size": s.size, "batch": args.synth_prompts}


def synth_rows(setup: Setup, args, prompts_file: Path) -> list[dict]:
    from vdistill.commands.synth import run as synth_run

    a, out = synth_args(setup, args), setup.work / "synth_out"
    size = ["--frames", str(a["frames"]), "--height", str(a["size"]), "--width", str(a["size"])]
    ours_argv = ["--model", str(setup.wan), "--prompts", str(prompts_file), "--out", str(out / "ours"),
                 "--steps", str(a["steps"]), "--key-indices", a["keys"], "--cfg", str(a["cfg"]),
                 "--batch-size", str(a["batch"]), "--dtype", "float32", *size]
    bare_argv = ["synth", "--model", str(setup.wan), "--prompts", str(prompts_file), "--out", str(out / "bare"),
                 "--steps", str(a["steps"]), "--key-indices", a["keys"], "--cfg", str(a["cfg"]),
                 "--batch-size", str(a["batch"]), *size]

    def prepare(name: str) -> None:
        fresh(out / ("ours" if name.startswith("ours") else "bare"))

    detail = f"{len(wan_prompts(args.synth_prompts))} trajectories, {a['steps']} steps + CFG"
    return compare_rows("synth", lambda: synth_run(ours_argv), ours_argv, bare_argv, args, prepare, detail)


def compare_rows(name: str, ours, ours_argv: list[str], bare_argv: list[str], args, prepare,
                 detail: str) -> list[dict]:
    """``ours()`` against ``bare.main(bare_argv)`` in this process, alternating (and as whole processes with
    ``--commands``); a cProfile of ours when the ratio is below the goal."""
    in_process = reps([("ours", ours), ("bare", lambda: bare.main(bare_argv))], args.reps, prepare)
    rows = [row(f"{name} (in-process)", in_process, detail)]
    if args.commands:
        rows.append(command_row(name, ours_argv, bare_argv, args, prepare))
    if rows[0]["ratio"] < GOAL:
        prepare("ours")
        rows[0]["profile"] = profile_top(ours)
    return rows


def command_row(name: str, ours_argv: list[str], bare_argv: list[str], args, prepare) -> dict:
    """``vdistill NAME OURS_ARGV`` against ``python bare.py BARE_ARGV`` as whole processes, alternating."""
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    ours_cmd = [*vdistill_command(), name, *ours_argv]
    bare_cmd = [sys.executable, str(HERE / "bare.py"), *bare_argv]
    command = reps([("ours", lambda: run_ok(ours_cmd, env)), ("bare", lambda: run_ok(bare_cmd, env))],
                   args.reps, prepare)
    return row(f"{name} (command)", command, "whole processes: imports, load, sample, write")


def run_ok(cmd: list[str], env: dict) -> None:
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if res.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({res.returncode}):\n{res.stderr[-3000:]}")


def export_student(setup: Setup, module, out: Path) -> Path:
    """The trained trajectory student written as the distillation module writes a checkpoint, then ``vdistill
    export``: a WanPipeline folder."""
    from vdistill.commands.export import run as export_run

    ckpt = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(ckpt)
    path = setup.work / "student.ckpt"
    torch.save(ckpt, path)
    export_run(["--ckpt", str(path), "--out", str(fresh(out))])
    return out


def sample_rows(setup: Setup, args, export: Path, prompts_file: Path) -> list[dict]:
    from vdistill.commands.sample import run as sample_run

    s, out = setup.size, setup.work / "sample_out"
    size = ["--frames", str(s.frames), "--height", str(s.size), "--width", str(s.size)]
    steps = len(setup.keys) - 1
    ours_argv = ["--model", str(export), "--prompts", str(prompts_file), "--out", str(out / "ours"), "--mp4", "0",
                 "--steps", str(steps), *size]
    bare_argv = ["sample", "--model", str(export), "--prompts", str(prompts_file), "--out", str(out / "bare"),
                 "--steps", str(steps), *size]

    def prepare(name: str) -> None:
        fresh(out / name)

    detail = f"{len(wan_prompts(args.sample_prompts))} videos, {steps}-step student, --mp4 0"
    rows = compare_rows("sample", lambda: sample_run(ours_argv), ours_argv, bare_argv, args, prepare, detail)
    return rows + sample_part_rows(export, prompts_file, steps, s, args.reps)


def sample_part_rows(export: Path, prompts_file: Path, steps: int, s: WanSize, n: int) -> list[dict]:
    """Where the time of ``sample`` goes, side by side: each rep loads both models afresh (as each ``sample`` call
    does) and times, on each, the text encoding, the denoising steps and the VAE decode of the same prompts at the
    same size (ours: ``encode_text``, ``sample_latents``, ``decode_latents``; the pipeline: ``encode_prompt``, its
    call with ``output_type="latent"``, ``vae.decode``), the sides in :func:`reps`' alternating order."""
    from diffusers import WanPipeline

    from vdistill.backbones.io import load_backbone
    from vdistill.sampling.sampler import initial_noise, sample_latents

    prompts = [ln.strip() for ln in prompts_file.read_text().splitlines() if ln.strip()]
    parts = ("load", "text encoding", "denoising", "VAE decode")
    times = {(side, part): Times(side) for side in ("ours", "bare") for part in parts}

    def clock(side: str, part: str, fn):
        start = time.perf_counter()
        out = fn()
        times[(side, part)].seconds.append(time.perf_counter() - start)
        return out

    @torch.no_grad()
    def ours() -> None:
        model = clock("ours", "load", lambda: load_backbone(str(export)))
        text = clock("ours", "text encoding", lambda: model.encode_text(prompts))
        noise = initial_noise(model.latent_shape(s.frames, s.size, s.size), range(len(prompts)), "cpu")
        res = clock("ours", "denoising", lambda: sample_latents(model, noise, text, steps=steps, cfg=1.0))
        clock("ours", "VAE decode", lambda: model.decode_latents(res.latents))

    @torch.no_grad()
    def pipeline() -> None:
        pipe = clock("bare", "load", lambda: WanPipeline.from_pretrained(str(export)))
        pipe.set_progress_bar_config(disable=True)
        # 512 text positions, what the pipeline's call encodes (encode_prompt's own default is 226: a shorter
        # cross-attention than the call's, and than ours)
        embeds = clock("bare", "text encoding", lambda: pipe.encode_prompt(
            prompts, do_classifier_free_guidance=False, max_sequence_length=512))
        gens = [torch.Generator().manual_seed(i) for i in range(len(prompts))]
        latents = clock("bare", "denoising", lambda: pipe(
            prompt_embeds=embeds[0], num_inference_steps=steps, guidance_scale=1.0, generator=gens,
            output_type="latent", num_frames=s.frames, height=s.size, width=s.size).frames)
        vae = pipe.vae
        mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1)
        std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1)
        clock("bare", "VAE decode", lambda: pipe.video_processor.postprocess_video(
            vae.decode(latents * std + mean, return_dict=False)[0], output_type="np"))

    reps([("ours", ours), ("bare", pipeline)], n)  # the whole rep of each side, A B, B A; its parts clocked inside
    return [row(f"sample part: {part} (fresh load)", {"ours": times[("ours", part)], "bare": times[("bare", part)]},
                f"{len(prompts)} prompts") for part in parts]


# -- start-up ----------------------------------------------------------------------------------------------------
def startup(args, synth_cmd: list[str] | None, sample_cmd: list[str] | None) -> dict:
    """Median wall-clock time of ``vdistill --help`` / ``list`` and of ``import torch``; which top-level packages the
    whole ``synth`` / ``sample`` commands import and how long that takes (``-X importtime``)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    cmds = {"vdistill --help": [*vdistill_command(), "--help"], "vdistill list": [*vdistill_command(), "list"],
            "python -c 'import torch'": [sys.executable, "-c", "import torch"]}
    out = {}
    for _ in range(args.reps):
        for name, cmd in cmds.items():
            out.setdefault(name, []).append(timed(lambda c=cmd: run_ok(c, env)))
    result = {"seconds": {k: {"median_s": statistics.median(v), "min_s": min(v), "max_s": max(v)}
                          for k, v in out.items()}}
    for name, cmd in (("list", ["list"]), ("synth", synth_cmd), ("sample", sample_cmd)):
        if cmd is not None:
            result[name] = import_report([sys.executable, "-X", "importtime", "-m", "vdistill.cli", *cmd], env)
    return result


def import_report(cmd: list[str], env: dict) -> dict:
    """Whether the command imports Lightning, its total import time, and the cumulative import time of each
    top-level package at its first import (``-X importtime`` lines: ``import time: self [us] | cumulative [us] |
    name``, nested imports indented; a package imported inside another counts in both)."""
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if res.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{res.stderr[-3000:]}")
    total, packages = 0.0, {}
    for line in res.stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \| (\s*)(\S+)", line)
        if not m:
            continue
        seconds = int(m.group(2)) / 1e6
        if not m.group(3):
            total += seconds
        if "." not in m.group(4):
            packages[m.group(4)] = max(packages.get(m.group(4), 0.0), seconds)
    heavy = {k: round(v, 3) for k, v in sorted(packages.items(), key=lambda kv: -kv[1]) if v >= 0.05}
    return {"imports_lightning": "lightning" in packages or "pytorch_lightning" in packages,
            "import_s_total": round(total, 3), "import_s_by_package": heavy}


# -- report --------------------------------------------------------------------------------------------------------
def row(name: str, times: dict[str, Times], what: str) -> dict:
    ours, theirs = times["ours"], times["bare"]
    return {"row": name, "what": what, "ours": ours.summary(), "bare": theirs.summary(), "ratio": ratio(theirs, ours),
            "ours_median_s": ours.median, "bare_median_s": theirs.median, "ours_min_s": min(ours.seconds),
            "ours_max_s": max(ours.seconds), "bare_min_s": min(theirs.seconds), "bare_max_s": max(theirs.seconds),
            "n": len(ours.seconds)}


COLUMNS = [("row", "row", "s"), ("n", "n", "d"), ("ours_min_s", "ours min (s)", ".3f"),
           ("ours_median_s", "ours median (s)", ".3f"), ("ours_max_s", "ours max (s)", ".3f"),
           ("bare_min_s", "bare min (s)", ".3f"), ("bare_median_s", "bare median (s)", ".3f"),
           ("bare_max_s", "bare max (s)", ".3f"), ("ratio", "bare / ours", ".3f")]


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default="runs/bench/overhead", help="folder of the model, data and outputs (reused)")
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--steps", type=int, default=30, help="timed training steps per arm, after the warm-up")
    p.add_argument("--warmup", type=int, default=3, help="untimed training rounds first")
    p.add_argument("--reps", type=int, default=5, help="repetitions of each command (synth, sample, start-up)")
    p.add_argument("--batch", type=int, default=2, help="training batch (trajectories / clips)")
    p.add_argument("--lora-rank", type=int, default=16)
    p.add_argument("--synth-prompts", type=int, default=4)
    p.add_argument("--synth-steps", type=int, default=10)
    p.add_argument("--sample-prompts", type=int, default=8)
    p.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", 1)),
                   help="torch threads (default: OMP_NUM_THREADS, else 1)")
    p.add_argument("--only", default="train,synth,sample,startup",
                   help="comma-separated parts: train, synth, sample, startup")
    p.add_argument("--commands", action=argparse.BooleanOptionalAction, default=True,
                   help="also time the whole synth / sample commands as processes")
    p.add_argument("--quick", action="store_true", help="a tiny model and 1-2 steps of everything (tests)")
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.warmup, args.reps, args.batch, args.lora_rank = 2, 1, 1, 2, 4
        args.synth_prompts, args.synth_steps, args.sample_prompts = 2, 2, 2
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    torch.set_num_threads(args.threads)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    parts = set(args.only.split(","))
    work = Path(args.work)
    size = QUICK if args.quick else BENCH
    log(f"setting up the reduced Wan ({size}) in {work}")
    setup = Setup(work, size, args.quick)
    rows, extra = [], {}
    module = None
    if "train" in parts or "sample" in parts:
        log("train trajectory: Lightning + Distillation vs a bare loop")
        times, info = train_trajectory(setup, args, args.threads)
        module = info.pop("module")
        rows.append(row("train trajectory (full student)", times, f"batch {args.batch} x {len(setup.keys) - 1} "
                        "key-point pairs"))
        rows[-1].update(info)
    if "train" in parts:
        log("train consistency: Lightning + Distillation vs a bare loop")
        times, info = train_consistency(setup, args, args.threads)
        rows.append(row(f"train consistency (LoRA r{args.lora_rank})", times, f"batch {args.batch} clips"))
        rows[-1].update(info)
    prompts_synth = work / "prompts_synth.txt"
    prompts_synth.write_text("\n".join(wan_prompts(args.synth_prompts)) + "\n")
    prompts_sample = work / "prompts_sample.txt"
    prompts_sample.write_text("\n".join(wan_prompts(args.sample_prompts)) + "\n")
    synth_cmd = sample_cmd = None
    if "synth" in parts:
        log("synth: vdistill synth vs a bare loop of teacher steps with CFG")
        rows.extend(synth_rows(setup, args, prompts_synth))
        a = synth_args(setup, args)
        synth_cmd = ["synth", "--model", str(setup.wan), "--prompts", str(prompts_synth), "--out",
                     str(fresh(work / "synth_out" / "importtime")), "--steps", str(a["steps"]), "--key-indices",
                     a["keys"], "--frames", str(a["frames"]), "--height", str(a["size"]), "--width", str(a["size"])]
    if "sample" in parts:
        log("sample: vdistill sample vs the WanPipeline call of the export")
        export = export_student(setup, module, work / "export")
        rows.extend(sample_rows(setup, args, export, prompts_sample))
        s = setup.size
        sample_cmd = ["sample", "--model", str(export), "--prompts", str(prompts_sample), "--out",
                      str(fresh(work / "sample_out" / "importtime")), "--mp4", "0", "--frames", str(s.frames),
                      "--height", str(s.size), "--width", str(s.size)]
    if "startup" in parts:
        log("start-up")
        extra["startup"] = startup(args, synth_cmd, sample_cmd)
    return report(args, setup, rows, extra)


def report(args, setup: Setup, rows: list[dict], extra: dict) -> dict:
    from reduced_wan import transformer_parameters

    info = {**machine(), "model": {**vars(setup.size), "dim": setup.size.dim, "tokens_per_clip": setup.size.tokens(),
                                   "transformer_parameters": transformer_parameters(setup.wan)}}
    print(f"reduced Wan2.1: {info['model']['transformer_parameters'] / 1e6:.1f}M-parameter transformer "
          f"({setup.size.layers} blocks, width {setup.size.dim}), clips {setup.size.frames} x {setup.size.size} x "
          f"{setup.size.size} ({setup.size.tokens()} tokens); {info['cpus']} CPUs ({info['cpu']}), "
          f"{args.threads} torch thread(s), torch {info['torch']}")
    print(table(rows, COLUMNS))
    for r in rows:
        if "profile" in r:
            print(f"\nprofile of ours, {r['row']} (ratio {r['ratio']:.3f} < {GOAL}):\n{r['profile']}")
    if "startup" in extra:
        su = extra["startup"]
        print("\nstart-up (median s): " + ", ".join(f"{k} {v['median_s']:.2f}" for k, v in su["seconds"].items()))
        for name in ("list", "synth", "sample"):
            if name in su:
                r = su[name]
                pk = ", ".join(f"{k} {v:.2f}" for k, v in list(r["import_s_by_package"].items())[:8])
                print(f"vdistill {name}: imports lightning: {'yes' if r['imports_lightning'] else 'no'}; "
                      f"imports {r['import_s_total']:.2f} s ({pk})")
    payload = {"machine": info, "args": {k: v for k, v in vars(args).items()}, "rows": rows, **extra}
    write_json(args.json, payload)
    return payload


if __name__ == "__main__":
    main()
