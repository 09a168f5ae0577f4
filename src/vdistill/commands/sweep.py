"""``vdistill sweep SWEEP.yaml``: run every combination of config fragments, one after another, into one table.

Each run is a ``vdistill fit`` subprocess (a crash ends that run, not the sweep) in ``OUT/<run>/``; after each
run ``OUT/results.csv`` and ``OUT/results.md`` list every run's options, status and final metrics. Rerun the
same command after a crash or Ctrl-C: finished runs are skipped, an unfinished one continues from its last
checkpoint, and a run whose resolved config changed since is run again (its old folder kept under
``OUT/_stale/``).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

from vdistill.commands.parse_errors import CommandParser, explain_parse_error, union_cause
from vdistill.errors import UserError, unknown_choice
from vdistill.sweep.results import final_scalars, write_results
from vdistill.sweep.runs import DONE, LOG, RECORD, RESOLVED, Plan, plan_run, prepare, read_json, run_status, write_json
from vdistill.sweep.spec import Run, Sweep, load_sweep

TAIL_LINES = 15


def print_config(args: list[str]) -> str:
    """``vdistill fit ARGS --print_config``, in this process (no second start-up of torch and Lightning)."""
    from vdistill.commands.lightning_cli import VDistillCLI

    buf, argv = io.StringIO(), sys.argv
    sys.argv = argv[:1]  # LightningCLI warns when given args while sys.argv has some (ours: the sweep's)
    try:
        with contextlib.redirect_stdout(buf):
            VDistillCLI(args=["fit", *args, "--print_config"])
    except SystemExit as exc:
        if exc.code not in (0, None):
            raise
    finally:
        sys.argv = argv
    return buf.getvalue()


def resolved_config(run: Run) -> str:
    """``vdistill fit --print_config`` of ``run``'s arguments; a config the CLI refuses is one line naming the run."""
    try:
        return print_config(list(run.args))
    except argparse.ArgumentError as err:
        raise UserError(f"run {run.name!r}: {union_cause(err) or explain_parse_error(err)}") from None


def fit_command(plan: Plan) -> list[str]:
    """The run's ``vdistill fit`` as this interpreter runs it (the same environment as the sweep)."""
    cmd = [sys.executable, "-m", "vdistill.cli", "fit", "--config", str(plan.dir / RESOLVED)]
    return cmd + (["--ckpt_path", str(plan.ckpt)] if plan.action == "resume" else [])


def shown(cmd: list[str]) -> str:
    return " ".join(["vdistill", *cmd[3:]])


def _stop(proc: subprocess.Popen) -> None:
    # A Ctrl-C in the terminal reached the child too (same process group), a SIGTERM to the sweep did not: one
    # more SIGINT is harmless (Lightning ignores SIGINT once it shuts down) and stops it gracefully; kill it when
    # it does not stop.
    for stop in (lambda: proc.send_signal(signal.SIGINT), proc.kill):
        stop()
        try:
            proc.wait(timeout=60)
            return
        except subprocess.TimeoutExpired:
            continue


def _sigterm_to_interrupt(signum, frame):
    raise KeyboardInterrupt


def run_fit(cmd: list[str], log_path: Path, quiet: bool = False) -> int:
    """Run ``cmd``, appending its output (stdout and stderr) to ``log_path`` and echoing it unless ``quiet``."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with log_path.open("ab") as log:
        log.write(f"\n===== {datetime.now().isoformat(timespec='seconds')} {shown(cmd)}\n".encode())
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
        try:
            while chunk := proc.stdout.read1(1 << 16):
                log.write(chunk)
                log.flush()
                if not quiet:
                    sys.stdout.buffer.write(chunk)
                    sys.stdout.flush()
            return proc.wait()
        except KeyboardInterrupt:
            _stop(proc)
            raise


def log_tail(path: Path, n: int = TAIL_LINES) -> list[str]:
    try:
        lines = path.read_text(errors="replace").replace("\r", "\n").splitlines()
    except OSError:
        return []
    return [ln for ln in lines if ln.strip()][-n:]


def result_row(plan: Plan) -> dict:
    status, record = run_status(plan)
    row = {"run": plan.run.name, **plan.run.options, "status": status}
    if status != "stale":
        metrics, logdir = final_scalars(plan.dir)
        row.update(metrics)
        row.update(seconds=record.get("seconds"), tensorboard=logdir)
    if status.startswith("failed"):
        row["error"] = (log_tail(plan.dir / LOG, 1) or [""])[0][:200]
    return row


def _stopped_by_sigterm(log: Path, offset: int) -> bool:
    # Lightning stops at the next step on SIGTERM (a cluster's pre-emption) and exits with status 0.
    with log.open("rb") as f:
        f.seek(offset)
        return b"Received SIGTERM" in f.read()


def attempt(plan: Plan, sweep: Sweep, quiet: bool) -> str:
    """Run one planned run to its end; return its status (``done``, ``failed (exit N)``)."""
    moved = prepare(plan, sweep.out)
    if moved is not None:
        print(f"  {plan.run.name}: {plan.stale}; its old folder is now {moved}")
    cmd = fit_command(plan)
    record = {"run": plan.run.name, "options": plan.run.options, "hash": plan.hash, "command": shown(cmd),
              "started": datetime.now().isoformat(timespec="seconds"), "status": "running"}
    spent = ((read_json(plan.dir / RECORD) or {}).get("seconds") or 0) if plan.action == "resume" else 0
    write_json(plan.dir / RECORD, {**record, "seconds": spent})
    start, log_start = time.monotonic(), (plan.dir / LOG).stat().st_size if (plan.dir / LOG).exists() else 0
    try:
        code = run_fit(cmd, plan.dir / LOG, quiet)
    except KeyboardInterrupt:
        write_json(plan.dir / RECORD, {**record, "status": "interrupted",
                                       "seconds": round(spent + time.monotonic() - start, 1)})
        raise
    seconds = round(spent + time.monotonic() - start, 1)
    if code == 0 and _stopped_by_sigterm(plan.dir / LOG, log_start):
        write_json(plan.dir / RECORD, {**record, "status": "interrupted", "returncode": code, "seconds": seconds})
        raise KeyboardInterrupt
    write_json(plan.dir / RECORD, {**record, "status": "done" if code == 0 else "failed", "returncode": code,
                                   "seconds": seconds})
    if code == 0:
        write_json(plan.dir / DONE, {"run": plan.run.name, "hash": plan.hash, "seconds": seconds,
                                     "finished": datetime.now().isoformat(timespec="seconds")})
        return "done"
    return f"failed (exit {code})"


def print_plans(plans: list[Plan], only: list[str] | None, commands: bool) -> None:
    width = max(len(p.run.name) for p in plans)
    for p in plans:
        selected = not only or p.run.name in only
        print(f"  {p.run.name:<{width}}  {p.describe() if selected else 'not selected (--only)'}")
        if commands and selected:
            print(f"    vdistill fit {' '.join(p.run.args)}")
            print(f"    -> {shown(fit_command(p))}")
        for where in p.shared:
            print(f"    warning: writes outside its run folder, shared by every run: {where}")


def run_sweep(sweep: Sweep, only: list[str] | None = None, dry_run: bool = False,
              quiet: bool = False) -> list[dict]:
    """Plan every run (configs resolved and checked before anything starts), run the selected ones in order,
    rewrite the results table after each; return the table's rows."""
    names = [r.name for r in sweep.runs]
    for name in only or []:
        if name not in names:
            raise unknown_choice("run", name, names)
    plans = [plan_run(r, sweep.out, resolved_config(r)) for r in sweep.runs]
    todo = [p for p in plans if (not only or p.run.name in only) and p.action != "skip"]
    print(f"sweep {sweep.path}: {len(plans)} runs under {sweep.out}" + (" (dry run)" if dry_run else ""))
    print_plans(plans, only, dry_run)
    if dry_run:
        return []
    failed, interrupted = [], False
    previous = signal.signal(signal.SIGTERM, _sigterm_to_interrupt)  # a cluster's pre-emption = Ctrl-C
    try:
        for i, plan in enumerate(todo, 1):
            print(f"[{i}/{len(todo)}] {plan.run.name}: {shown(fit_command(plan))}  (log: {plan.dir / LOG})",
                  flush=True)
            status = attempt(plan, sweep, quiet)
            print(f"[{i}/{len(todo)}] {plan.run.name}: {status}", flush=True)
            if status != "done":
                failed.append(plan.run.name)
                print("\n".join(f"    | {ln}" for ln in log_tail(plan.dir / LOG)))
            write_results([result_row(p) for p in plans], sweep.out, ["run", *sweep.columns, "status"])
    except KeyboardInterrupt:
        interrupted = True
    finally:
        signal.signal(signal.SIGTERM, previous)
    rows = [result_row(p) for p in plans]
    _, md = write_results(rows, sweep.out, ["run", *sweep.columns, "status"])
    print(md.read_text(), end="")
    print(f"results: {md} and {md.with_suffix('.csv')}")
    print(f"tensorboard --logdir {sweep.out}")
    if interrupted:
        print("sweep interrupted: rerun the same command to continue (finished runs are skipped)", file=sys.stderr)
        raise SystemExit(130)
    if failed:
        print(f"failed runs: {', '.join(failed)} (their logs: {sweep.out}/<run>/{LOG})", file=sys.stderr)
        raise SystemExit(1)
    return rows


def run(argv: list[str]) -> list[dict]:
    p = CommandParser(prog="vdistill sweep", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sweep", help="the sweep file (base, grid or runs, out: see experiments/toy/accvideo/ablation.yaml)")
    p.add_argument("--out", default=None, help="override the sweep file's output folder")
    p.add_argument("--only", nargs="+", metavar="NAME", help="run only these runs (the table still lists all)")
    p.add_argument("--dry-run", action="store_true", help="list the runs and their commands, run nothing")
    p.add_argument("--quiet", action="store_true", help="do not echo the fits' output (it stays in fit.log)")
    p.add_argument("--config", action="append", default=[], metavar="FRAGMENT",
                   help="a config fragment appended to every run (repeatable), e.g. experiments/gpu/one_gpu.yaml")
    args = p.parse_args(argv)
    return run_sweep(load_sweep(args.sweep, args.out, args.config), args.only, args.dry_run, args.quiet)
