"""Timing several training loops side by side in ONE process, one step at a time, interleaved (A B A B ...).

An :class:`Arm` is one loop that can be advanced by one step. A :class:`BareArm` runs a plain PyTorch step function
in the calling thread. A :class:`TrainerArm` runs ``Trainer.fit`` in a thread of its own that the :class:`Gate`
callback holds at the end of every training batch until the harness lets it take one more step: a step is timed
from the moment the fit resumes to the next ``on_train_batch_end``, so it includes everything the Trainer does
between two batches (loop bookkeeping, logging, other callbacks, fetching the batch), the forward, backward and
optimizer step. Only one arm runs at a time, so each has the CPU to itself; on a shared, noisy machine the
interleaving lets both arms see the same background load, and the medians and ratios are what to read.
"""

from __future__ import annotations

import json
import math
import statistics
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field


class Arm:
    """One loop of a comparison: :meth:`step` runs one step and returns its seconds."""

    name: str

    def step(self) -> float:
        raise NotImplementedError

    def close(self) -> None:
        """Release what the arm holds (a Trainer thread)."""


class BareArm(Arm):
    """A plain step function, timed around the call."""

    def __init__(self, name: str, step_fn: Callable[[], object]) -> None:
        self.name, self.step_fn = name, step_fn

    def step(self) -> float:
        start = time.perf_counter()
        self.step_fn()
        return time.perf_counter() - start


def make_gate():
    """The Lightning callback of a :class:`TrainerArm` (built lazily: commands that never train import no
    Lightning)."""
    import lightning as L

    class Gate(L.Callback):
        """Holds the fit at the end of each batch until :meth:`release`; records each step's seconds and its
        global step (the step just taken)."""

        def __init__(self) -> None:
            self.go, self.done = threading.Semaphore(0), threading.Semaphore(0)
            self.start = 0.0
            self.seconds: list[float] = []
            self.steps: list[int] = []

        def on_train_start(self, trainer, pl_module) -> None:
            self.go.acquire()
            self.start = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            self.seconds.append(time.perf_counter() - self.start)
            self.steps.append(trainer.global_step - 1)
            self.done.release()
            self.go.acquire()
            self.start = time.perf_counter()

    return Gate()


class TrainerArm(Arm):
    """``trainer.fit(module, datamodule)`` in a thread, advanced one training batch per :meth:`step`.

    ``trainer`` must stop by itself after as many steps as the harness takes (``max_steps``), and have a
    :func:`make_gate` callback passed as ``gate``; ``threads``: torch threads of the fit's thread."""

    def __init__(self, name: str, trainer, module, datamodule, gate, threads: int | None = None) -> None:
        self.name, self.gate = name, gate
        self.error: BaseException | None = None

        def fit() -> None:
            try:
                if threads:  # OpenMP's thread count is a per-thread setting
                    import torch

                    torch.set_num_threads(threads)
                trainer.fit(module, datamodule=datamodule)
            except BaseException as err:  # noqa: BLE001 - handed to the main thread
                self.error = err
            finally:
                gate.done.release()  # the harness never waits for a step of a fit that ended

        self.thread = threading.Thread(target=fit, name=name, daemon=True)
        self.thread.start()

    def step(self) -> float:
        n = len(self.gate.seconds)
        self.gate.go.release()
        self.gate.done.acquire()
        if self.error is not None:
            raise RuntimeError(f"{self.name}: the fit failed") from self.error
        if len(self.gate.seconds) == n:
            raise RuntimeError(f"{self.name}: the fit ended after {n} steps (max_steps too small)")
        return self.gate.seconds[-1]

    def close(self) -> None:
        self.gate.go.release()
        self.thread.join(timeout=600)
        if self.error is not None:
            raise RuntimeError(f"{self.name}: the fit failed") from self.error


@dataclass
class Times:
    """The step times of one arm after its warm-up steps."""

    name: str
    seconds: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    def summary(self) -> dict:
        s = self.seconds
        return {"steps": len(s), "min_s": min(s), "median_s": self.median, "max_s": max(s),
                "mean_s": statistics.fmean(s)}


def interleave(arms: list[Arm], steps: int, warmup: int = 1, log: Callable[[str], None] | None = None
               ) -> dict[str, Times]:
    """``warmup + steps`` rounds; each round takes one step of every arm in turn (A B A B ...). The warm-up
    rounds (the first batch of a fit, lazy initialisations, allocator growth) are not kept."""
    times = {a.name: Times(a.name) for a in arms}
    for r in range(warmup + steps):
        last = {}
        for arm in arms:
            last[arm.name] = arm.step()
            if r >= warmup:
                times[arm.name].seconds.append(last[arm.name])
        if log is not None:
            what = "warm-up" if r < warmup else "round"
            log(f"  {what} {r + 1}/{warmup + steps}: " + ", ".join(f"{k} {v:.3f} s" for k, v in last.items()))
    return times


def ratio(bare: Times, ours: Times) -> float:
    """bare / ours of the medians: 1.0 = no overhead, 0.95 = ours 5% slower."""
    return bare.median / ours.median


def check_times(values: list[float]) -> bool:
    return bool(values) and all(math.isfinite(v) and v > 0 for v in values)


def table(rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
    """A Markdown table of ``rows`` (dicts) with ``columns`` ``(key, header, format)``."""
    head = "| " + " | ".join(h for _, h, _ in columns) + " |"
    rule = "|" + "|".join("---" if f == "s" else "---:" for _, _, f in columns) + "|"
    body = ["| " + " | ".join(("-" if r.get(k) is None else format(r[k], f)) for k, _, f in columns) + " |"
            for r in rows]
    return "\n".join([head, rule, *body])


def write_json(path: str | None, payload: dict) -> None:
    if path:
        with open(path, "w") as f:
            json.dump(payload, f, indent=2)
        print(f"wrote {path}", file=sys.stderr)


def machine() -> dict:
    """What the figures ran on: CPU model and count, torch threads, versions."""
    import os
    import platform

    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(),
            "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None}
