"""``vdistill demo``: the whole pipeline in the toy world, on a CPU, in minutes.

1. **synth**: the shipped flow teacher's own trajectories (50 Euler steps + CFG 3), key points 0, 25, 50 only;
2. **distil**: a 2-step student with trajectory guidance + adversarial alignment + reward feedback from the toy
   critics, an EMA of its weights and video samples (``vdistill/recipes/demo.yaml``, inside the package: an
   installed vdistill runs its demo from any folder);
3. **bench**: teacher 50 steps + CFG, teacher at the student's 2 steps + CFG, the shipped 2-step student
   ``toy-flow-2step`` (the best one ``make dmd`` trained: what a longer distillation reaches) and the demo's own
   student, on the same prompts and seeds, with the speed-ups and paired differences measured in the same run.
   The seeds are held out: noise the trajectories (and so the students) never used.

Everything goes under ``--out`` (default ``runs/demo``): ``synvid/`` (the trajectories), ``train/`` (TensorBoard
logs, checkpoints, ``export/``), ``samples/<row>/`` (``videos.npz``, mp4s, ``grid.gif``), ``toybench.md``,
``toybench.json`` and ``stages.json`` (seconds per stage). A rerun continues: the trajectory set resumes, a
finished training is reused (``--fresh`` starts over).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from vdistill.backbones.io import load_backbone, shipped_models
from vdistill.commands.bench import run_bench
from vdistill.commands.parse_errors import CommandParser
from vdistill.data.prompts import load_prompts
from vdistill.errors import UserError
from vdistill.synth.writer import synthesize

#: the demo's recipe, package data (``pip install .`` ships it)
CONFIG = Path(__file__).resolve().parents[1] / "recipes" / "demo.yaml"
TEACHER = "toy-flow"
#: the shipped 2-step student the demo's own is compared with
STUDENT = "toy-flow-2step"
KEY_INDICES = (0, 25, 50)
# The bench samples from noise the student never trained on: trajectory i uses seed ``seed + i``, the bench's
# video i seed ``seed + max(HELD_OUT, number of trajectories) + i``.
HELD_OUT = 10_000


def train_args(out: Path, steps: int | None, fragments: list[Path], callbacks: bool = True) -> list[str]:
    """The ``vdistill fit`` arguments of the distillation stage, every path under ``out``; ``callbacks=False``
    drops the recipe's own (EMA, video samples)."""
    args = ["fit", "--config", str(CONFIG)] + ([] if callbacks else ["--trainer.callbacks=[]"])
    for frag in fragments:
        args += ["--config", str(frag)]
    args += ["--trainer.default_root_dir", str(out / "train"), "--data.init_args.root", str(out / "synvid"),
             "--trainer.callbacks+=ExportBackbone", "--trainer.callbacks.dirpath", str(out / "train" / "export"),
             "--trainer.callbacks.attr", "student",
             "--trainer.callbacks+=ModelCheckpoint", "--trainer.callbacks.dirpath", str(out / "train" / "checkpoints"),
             "--trainer.callbacks.save_last", "true", "--trainer.callbacks.every_n_train_steps", "50"]
    if steps is not None:
        args += ["--trainer.max_steps", str(steps)]
    return args


@contextlib.contextmanager
def _stage(name: str, times: dict[str, float], out: Path) -> Iterator[None]:
    """Time one stage; a finished stage's seconds are added to ``out/stages.json``."""
    print(f"\n=== {name} ===", flush=True)
    start = time.perf_counter()
    yield
    times[name] = round(time.perf_counter() - start, 1)
    print(f"=== {name}: {times[name]:.0f} s ===", flush=True)
    (out / "stages.json").write_text(json.dumps(times, indent=2))


def run(argv: list[str]) -> dict[str, dict]:
    p = CommandParser(prog="vdistill demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/demo", help="output folder")
    p.add_argument("--prompts", default="toy", help="'toy' (the 48 toy captions) or a text file, one prompt a line")
    p.add_argument("--repeat", type=int, default=1, help="trajectories per prompt")
    p.add_argument("--bench-repeat", type=int, default=1, help="videos per prompt in the table")
    p.add_argument("--max-steps", type=int, default=None, help="training steps (default: the demo config's)")
    p.add_argument("--no-callbacks", action="store_true", help="leave out the recipe's EMA and video samples")
    p.add_argument("--config", action="append", default=[], metavar="FRAGMENT",
                   help="a config fragment for the distillation, after the demo's own (repeatable), e.g. "
                        "experiments/toy/accvideo/demo_paired.yaml")
    p.add_argument("--fresh", action="store_true", help="delete --out first")
    p.add_argument("--seed", type=int, default=0,
                   help="first seed of the trajectories' noise; the bench's held-out seeds follow (default 0)")
    args = p.parse_args(argv)
    missing = [f for f in args.config if not Path(f).is_file()]
    if missing:
        raise UserError(f"--config fragment(s) {missing} do not exist")
    fragments = [Path(f) for f in args.config]
    out = Path(args.out)
    if args.fresh and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    times: dict[str, float] = {}

    with _stage("1/3 synth: the teacher's trajectories", times, out):
        teacher = load_backbone(TEACHER)
        trajectories = load_prompts(args.prompts, repeat=args.repeat)
        synthesize(teacher, trajectories, out / "synvid", key_indices=KEY_INDICES, dtype="float32", seed=args.seed)

    export = out / "train" / "export"
    with _stage("2/3 distil: trajectory + adversarial + reward", times, out):
        if (export / "model.safetensors").is_file():
            print(f"reusing the finished training in {out / 'train'} (--fresh to train again)")
        else:
            from vdistill.commands.lightning_cli import VDistillCLI

            last = out / "train" / "checkpoints" / "last.ckpt"
            fit = train_args(out, args.max_steps, fragments, callbacks=not args.no_callbacks)
            if last.is_file():  # a killed demo continues where it stopped
                print(f"resuming from {last}")
                fit += ["--ckpt_path", str(last)]
            print("vdistill " + " ".join(fit), flush=True)
            argv, sys.argv = sys.argv, sys.argv[:1]  # LightningCLI warns when both sys.argv and args are set
            try:
                VDistillCLI(args=fit)
            finally:
                sys.argv = argv

    with _stage("3/3 bench: teacher vs student", times, out):
        rows = [{"name": "teacher_50steps_cfg", "model": TEACHER, "steps": 50},
                {"name": "teacher_2steps_cfg", "model": TEACHER, "steps": 2},
                *([{"name": "shipped_student_2steps", "model": STUDENT}] if STUDENT in shipped_models() else []),
                {"name": "student_2steps", "model": str(export)}]
        held_out = args.seed + max(HELD_OUT, len(trajectories))
        results = run_bench(rows, out, args.prompts, args.bench_repeat, held_out, reference=rows[0]["name"])

    print("\nseconds per stage: " + ", ".join(f"{k.split(':')[0]} {v:.0f}" for k, v in times.items()))
    print(f"samples (GIF grids, mp4, videos.npz) under {out}/samples/; table in {out}/toybench.md")
    print(f"training curves and video samples:  tensorboard --logdir {out / 'train'}")
    return results
