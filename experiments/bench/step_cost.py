"""The cost of one training step of DMD2 against trajectory guidance and consistency distillation (issue 16).

    python experiments/bench/step_cost.py --json runs/bench/step_cost.json

For each model (the shipped toy flow teacher ``toy-flow`` at batch 16, and the reduced Wan2.1 transformer of
:mod:`reduced_wan` at batch 2), three ``Distillation`` fits through the Lightning Trainer run side by side in ONE
process, one step each in turn (:mod:`harness`):

* ``trajectory``: ``TrajectoryGuidance`` (AccVideo), full student, on a trajectory set written by vdistill's
  ``synthesize`` (key points 0, 2, 4 of 4 steps: a 2-step student; only the number of key points matters here);
* ``consistency``: ``ConsistencyDistillation`` (T2V-Turbo) with a full student on real clips (toy: rendered
  ``ToyVideos``; Wan: a ``vdistill preprocess`` latent cache), the recipes' settings (toy: EMA target 0.95; Wan:
  the online target), gradient norm clipped at 1;
* ``dmd``: ``DistributionMatching`` (DMD2) with a full fake score and ``fake_updates: 5``, on the same trajectory
  set (which only fixes the student's key timesteps: its inputs are its own chain from noise). Global steps
  0, 5, 10, ... update the student (and the fake score), the others the fake score alone.

Each step's wall-clock time, and the FLOPs of one step of each kind counted by ``torch.utils.flop_counter``'s
``FlopCounterMode`` (forward and backward matrix products, convolutions and attention; the optimizer's element-wise
update is not counted), with the networks' forwards counted by hooks: rows through the teacher, the student and the
fake score, with and without gradient (each forward with gradient is also one backward). DMD2's student and
fake-only steps unroll the student's chain to a key step drawn uniformly (backward simulation), so their FLOPs are
averaged over the possible draws. ``--quick``: tiny sizes and a few steps (tests); its figures mean nothing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from collections import Counter
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import TrainerArm, interleave, machine, make_gate, table, write_json  # noqa: E402
from reduced_wan import BENCH, QUICK, bench_data  # noqa: E402

OBJECTIVES = ("trajectory", "consistency", "dmd")
FAKE_UPDATES = 5


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- the three fits of one model -------------------------------------------------------------------------------
def build(kind: str, teacher: str, data: dict, batch: int, wan: bool):
    """``(module, datamodule, trainer options)`` of one objective on one model."""
    from vdistill.backbones.student import StudentConfig
    from vdistill.data.trajectories import TrajectoryData
    from vdistill.modules.distill import Distillation
    from vdistill.objectives import TrajectoryGuidance
    from vdistill.objectives.consistency import ConsistencyDistillation
    from vdistill.objectives.distribution_matching import DistributionMatching
    from vdistill.roles.fake_score import FakeScoreConfig

    trajectories = TrajectoryData(str(data["trajectories"]), batch_size=batch, num_workers=0, dtype="float32")
    if kind == "trajectory":
        return Distillation(teacher, [TrajectoryGuidance()], lr=2e-4), trajectories, {}
    if kind == "dmd":  # experiments/toy/dmd/dmd.yaml
        dmd = DistributionMatching(fake_updates=FAKE_UPDATES, fake_score=FakeScoreConfig(mode="full"))
        return Distillation(teacher, [dmd], lr=2e-4, weight_decay=0.01), trajectories, {}
    if wan:  # experiments/wan/turbo_1.3b.yaml's objective, with a full student as the other two
        from vdistill.data.latent_clips import LatentClips

        cd = ConsistencyDistillation(num_ddim_timesteps=50, skip=20, w_min=2.0, w_max=6.0, guidance=4.0)
        module = Distillation(teacher, [cd], student=StudentConfig(guidance_embedding=True), lr=2e-4)
        clips = LatentClips(str(data["clips"]), batch_size=batch, num_workers=0, dtype="float32")
    else:  # experiments/toy/turbo/turbo.yaml on the flow teacher
        from vdistill.data.toy import ToyVideos

        cd = ConsistencyDistillation(num_ddim_timesteps=50, skip=20, w_min=1.0, w_max=3.0, guidance=2.0)
        module = Distillation(teacher, [cd], student=StudentConfig(guidance_embedding=True), lr=2e-4,
                              target_ema_decay=0.95)
        clips = ToyVideos(batch_size=batch)
    return module, clips, {"gradient_clip_val": 1.0}


def one_batch(kind: str, datamodule, batch: int) -> dict:
    """A training batch as the module receives it (built from the datamodule's dataset, without a Trainer)."""
    if kind in ("trajectory", "dmd"):
        from vdistill.data.trajectories import collate

        dataset = datamodule.dataset if datamodule.dataset is not None else datamodule.build()
        return collate([dataset[i % len(dataset)] for i in range(batch)])
    if hasattr(datamodule, "build"):  # LatentClips
        from vdistill.data.latent_clips import CollateClips

        dataset = datamodule.dataset if datamodule.dataset is not None else datamodule.build()
        return CollateClips(dataset.uncond)([dataset[i % len(dataset)] for i in range(batch)])
    from vdistill.data.toy import ToyVideoDataset

    items = [ToyVideoDataset(batch, world=datamodule.world)[i] for i in range(batch)]
    return {"videos": torch.stack([v for v, _ in items]), "prompts": [p for _, p in items]}


# -- counting ----------------------------------------------------------------------------------------------------
def networks(module) -> dict[str, torch.nn.Module]:
    nets = {"teacher": module.teacher.denoiser, "student": module.student.denoiser}
    for obj in module.objectives:
        fake = getattr(obj, "fake_score", None)
        if fake is not None:
            nets["fake score"] = fake.net.denoiser
    return nets


def count_step(module, batch: dict, student_step: bool, seed: int) -> dict:
    """FLOPs (``FlopCounterMode``) and the networks' forwards of one training step of ``module`` on ``batch``:
    ``student_step`` runs every objective, else only the side losses (DMD2's fake-only step), then the backward.
    Rows: samples through a network; ``grad``: forwards with gradient (each also one backward)."""
    from torch.utils.flop_counter import FlopCounterMode

    calls: Counter = Counter()
    hooks = []
    for name, net in networks(module).items():
        def hook(_m, _args, out, name=name):
            rows = (out[0] if isinstance(out, (tuple, list)) else out).shape[0]
            calls[(name, "grad" if torch.is_grad_enabled() else "no_grad")] += rows
            calls[(name, "forwards")] += 1
        hooks.append(net.register_forward_hook(hook))
    torch.manual_seed(seed)
    models = module.models()
    try:
        with FlopCounterMode(display=False) as counter:
            total, drawn = 0.0, None
            for obj in module.objectives:
                out = obj(batch, models) if student_step else obj.side_losses(batch, models)
                total = total + obj.total(out)
                drawn = int(out["step"]) if "step" in out else None
            total.backward()
    finally:
        for h in hooks:
            h.remove()
    module.zero_grad(set_to_none=True)
    return {"flops": counter.get_total_flops(), "calls": dict(calls), "drawn_step": drawn}


def count_kind(module, batch: dict, student_step: bool) -> dict:
    """:func:`count_step` averaged over the key steps DMD2's backward simulation may draw (once for the others)."""
    seen: dict = {}
    for seed in range(64):
        res = count_step(module, batch, student_step, seed)
        seen.setdefault(res["drawn_step"], res)
        if res["drawn_step"] is None or len(seen) == len(module.key_timesteps or (0, 0)) - 1:
            break
    runs = list(seen.values())
    calls: Counter = Counter()
    for r in runs:
        calls.update({k: v / len(runs) for k, v in r["calls"].items()})
    return {"flops": statistics.fmean(r["flops"] for r in runs), "calls": dict(calls),
            "draws": sorted(k for k in seen if k is not None)}


def describe(calls: dict) -> str:
    """``teacher 1 x 32 rows; student 1 x 16 rows + backward`` from the hook counts."""
    parts = []
    for name in ("student", "teacher", "fake score"):
        no_grad, grad = calls.get((name, "no_grad"), 0), calls.get((name, "grad"), 0)
        bits = []
        if no_grad:
            bits.append(f"{no_grad:g} rows fwd")
        if grad:
            bits.append(f"{grad:g} rows fwd + bwd")
        if bits:
            parts.append(f"{name}: {', '.join(bits)}")
    return "; ".join(parts)


# -- one model ---------------------------------------------------------------------------------------------------
def run_model(label: str, teacher: str, data: dict, batch: int, wan: bool, args, work: Path) -> list[dict]:
    import lightning as L

    fits, arms, counts = {}, [], {}
    for kind in OBJECTIVES:
        module, datamodule, options = build(kind, teacher, data, batch, wan)
        if kind != "consistency":
            dataset = datamodule.build()
            module.bind_key_timesteps(dataset.timesteps.tolist())
        b = one_batch(kind, datamodule, batch)
        counts[kind] = {"student": count_kind(module, b, True)}
        if kind == "dmd":
            counts[kind]["fake"] = count_kind(module, b, False)
        gate = make_gate()
        trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=args.warmup + args.steps, log_every_n_steps=25,
                            enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                            default_root_dir=str(work / "logs" / f"{label}_{kind}"), callbacks=[gate], **options)
        fits[kind] = (gate, module)
        arms.append(TrainerArm(kind, trainer, module, datamodule, gate, args.threads))
        log(f"  {label} {kind}: FLOPs counted, fit started")
    try:
        times = interleave(arms, args.steps, args.warmup, log)
    finally:
        for arm in arms:
            arm.close()
    rows = []
    base = None
    for kind in OBJECTIVES:
        gate, module = fits[kind]
        steps = gate.steps[args.warmup:]
        secs = times[kind].seconds
        c = counts[kind]
        if kind != "dmd":
            med = statistics.median(secs)
            base = med if kind == "trajectory" else base
            rows.append(cost_row(label, kind, "every step", med, len(secs), c["student"], base))
            continue
        student = [s for s, g in zip(secs, steps) if g % FAKE_UPDATES == 0]
        fake = [s for s, g in zip(secs, steps) if g % FAKE_UPDATES != 0]
        k = FAKE_UPDATES
        avg_flops = (c["student"]["flops"] + (k - 1) * c["fake"]["flops"]) / k
        avg_calls = {key: (c["student"]["calls"].get(key, 0) + (k - 1) * c["fake"]["calls"].get(key, 0)) / k
                     for key in set(c["student"]["calls"]) | set(c["fake"]["calls"])}
        med_s = statistics.median(student) if student else float("nan")
        med_f = statistics.median(fake) if fake else float("nan")
        rows.append(cost_row(label, "dmd", f"average of 1 student + {k - 1} fake-only steps",
                             (med_s + (k - 1) * med_f) / k, len(secs), {"flops": avg_flops, "calls": avg_calls},
                             base))
        rows.append(cost_row(label, "dmd", "student step", med_s, len(student), c["student"], base))
        rows.append(cost_row(label, "dmd", "fake-only step", med_f, len(fake), c["fake"], base))
    return rows


def cost_row(model: str, kind: str, step: str, median: float, n: int, count: dict, base: float | None) -> dict:
    return {"model": model, "objective": kind, "step": step, "n": n, "median_s": median,
            "vs_trajectory": median / base if base else None, "gflops": count["flops"] / 1e9,
            "forwards": describe(count["calls"]),
            "calls": {f"{a}/{b}": v for (a, b), v in count["calls"].items()}}


COLUMNS = [("model", "model", "s"), ("objective", "objective", "s"), ("step", "step", "s"), ("n", "n", "d"),
           ("median_s", "median (s)", ".3f"), ("vs_trajectory", "x trajectory", ".2f"), ("gflops", "GFLOP", ".2f"),
           ("forwards", "forwards per step (rows = samples)", "s")]


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default="runs/bench/step_cost", help="folder of the data and logs (reused)")
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--steps", type=int, default=20, help="timed steps per fit after the warm-up (DMD2: 1 in 5 is a "
                   "student step)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--models", default="toy,wan", help="comma-separated: toy, wan")
    p.add_argument("--toy-batch", type=int, default=16)
    p.add_argument("--wan-batch", type=int, default=2)
    p.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", 1)),
                   help="torch threads (default: OMP_NUM_THREADS, else 1)")
    p.add_argument("--quick", action="store_true", help="tiny sizes, a few steps (tests)")
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.warmup, args.toy_batch, args.wan_batch = FAKE_UPDATES, 1, 2, 1
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    models = args.models.split(",")
    rows = []
    if "toy" in models:
        from vdistill.backbones.io import load_backbone

        log("toy-flow")
        flow = load_backbone("toy-flow")
        data = {"trajectories": bench_trajectories(flow, work / "toy_trajectories", args.toy_batch, args.quick)}
        rows += run_model("toy-flow", "toy-flow", data, args.toy_batch, False, args, work)
    if "wan" in models:
        log("reduced Wan2.1")
        size = QUICK if args.quick else BENCH
        data = bench_data(work, size, args.quick)
        rows += run_model("reduced Wan", str(data["wan"]), data, args.wan_batch, True, args, work)
    info = machine()
    print(f"{info['cpus']} CPUs ({info['cpu']}), {args.threads} torch thread(s), torch {info['torch']}; "
          f"{args.steps} timed steps per fit after {args.warmup} warm-up, interleaved")
    print(table(rows, COLUMNS))
    payload = {"machine": info, "args": vars(args), "rows": rows}
    write_json(args.json, payload)
    return payload


def bench_trajectories(model, out: Path, count: int, quick: bool) -> Path:
    """``count`` toy-flow trajectories, key points 0, 2, 4 of 4 Euler steps with CFG (float32)."""
    from reduced_wan import toy_prompts

    from vdistill.synth import synthesize

    keys = (0, 1, 2) if quick else (0, 2, 4)
    synthesize(model, toy_prompts(count), out, key_indices=keys, steps=keys[-1], dtype="float32", progress=False)
    return out


if __name__ == "__main__":
    main()
