"""``vdistill profile --measure``: the recipe's training step and one sampled video of teacher and student, run for
real with random weights on one device (speed does not depend on the weights).

The models are the profile's own (:func:`~vdistill.profile.trace.build` on the device: the shipped configs, random
weights, the recipe's precision cast), on ONE rank and unsharded: the measured peak memory is that of a single
process holding everything (the prediction's ``single`` strategy, not the recipe's sharded one).

* The step is the one the profile traces (:func:`run_step`) plus an AdamW update, timed over a few steps after
  warm-up.
* The videos are :func:`vdistill.sampling.generate.generate`, what ``vdistill sample`` runs minus writing files: the
  text encoding (the prompt, and the empty prompt under CFG), the denoising loop with the model's own steps and CFG
  (a student: its steps, no CFG; a consistency student: its sampler and embedded guidance), the VAE decode and the
  copy of the frames to the host. No tokenizer ships with the configs: the text encoder reads token ids of the
  family's full padded length (:func:`~vdistill.profile.models.meta_backbone`), which costs what a real prompt costs.
  Each model samples one warm-up video of ONE denoising step first (the same kernels at the same shapes: text
  encoder, denoiser, decoder), then one timed video.

On CUDA every time is taken between two CUDA events (the work the call queued; the host waits for it at the end);
on the CPU (``device="cpu"``: tests and dry runs at tiny sizes) by ``time.perf_counter``, and peak memory and MFU are
not known there (``None``).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch import nn

from vdistill.backbones.base import Backbone
from vdistill.errors import UserError
from vdistill.profile.recipe import Recipe
from vdistill.profile.trace import Setup, build, cast_for_precision, make_batch

#: dense bf16 tensor-core peak (TFLOP/s, no sparsity) by device name: NVIDIA's data sheets (SXM parts)
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0}
#: which sampled videos ``--measure`` times
VIDEO_CHOICES = ("both", "student", "none")
GIB = 1024**3


def trained_parameters(setup: Setup) -> list[nn.Parameter]:
    modules = [setup.student, *setup.objectives, setup.discriminator]
    found = {id(p): p for m in modules if m is not None for p in m.parameters() if p.requires_grad}
    return list(found.values())


def run_step(setup: Setup, optimizer: torch.optim.Optimizer) -> None:
    """One training step of the recipe: every objective's forward, ONE backward, the optimizer's update."""
    from vdistill.objectives.base import Models

    batch = make_batch(setup)
    models = Models(student=setup.student, teacher=setup.teacher, discriminator=setup.discriminator,
                    critics=dict(setup.critics) or None, guidance=setup.guidance)
    total = sum(obj.total(obj(batch, models)) for obj in setup.objectives)
    total.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds ``fn()`` takes on ``device``: between two CUDA events on a GPU, by ``time.perf_counter`` elsewhere."""
    if device.type != "cuda":
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start
    torch.cuda.synchronize(device)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1000


def check_fits(setup: Setup, predicted: dict, device: torch.device) -> None:
    """Refuse, before running it, a step that cannot fit the GPU: the weights now allocated on it plus the
    activations the profile traced for this very step (a lower bound of what the step holds) over its memory."""
    resident = torch.cuda.memory_allocated(device)
    activations = predicted["memory_per_rank_bytes"]["activations"]
    total = torch.cuda.get_device_properties(device).total_memory
    if resident + activations > total:
        s = setup.shape
        raise UserError(f"out of memory (predicted, not run): the step at {s.frames} x {s.height} x {s.width} needs at "
                        f"least {resident / GIB:.1f} GiB of weights + {activations / GIB:.1f} GiB of traced "
                        f"activations, over the {total / GIB:.1f} GiB of {torch.cuda.get_device_name(device)}; give a "
                        "smaller --frames / --height / --width")


def measure(recipe: Recipe, opts: dict, predicted: dict, warmup: int = 2, steps: int = 3, videos: str = "both",
            device: str = "cuda") -> dict:
    """Time, achieved TFLOP/s (the profile's counted FLOPs over the measured time), MFU against the device's bf16
    peak, and peak allocated memory of the recipe's step on ``device``; then (``videos``: both, student, none) the
    seconds of one sampled video of the teacher and of the student and the measured speed-up.

    Args:
        recipe: the recipe read by :func:`~vdistill.profile.recipe.read_recipe`.
        opts: the profile's size options (frames, height, width, batch, key_indices, teacher_config).
        predicted: the profile's figures (``flops_per_step``, ``memory_per_rank_bytes``, ``video``).
        warmup: untimed steps first (the first one makes AdamW's state).
        steps: timed steps (the step time is their mean).
        videos: which videos to sample and time after the steps.
        device: ``cuda`` (CUDA events, peak memory, MFU) or ``cpu`` (wall clock; tests and dry runs).
    """
    dev = torch.device(device)
    torch.manual_seed(0)
    setup = build(recipe, opts, device=dev.type)
    cast_for_precision(setup)
    if dev.type == "cuda":
        check_fits(setup, predicted, dev)
    step_s = step_seconds(setup, dev, warmup, steps)
    tflops = predicted["flops_per_step"]["total"] / step_s / 1e12
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)
    out = {"device": name, "step_s": step_s, "tflops": tflops, "peak_tflops": peak,
           "mfu": None if peak is None else tflops / peak,
           "peak_bytes": torch.cuda.max_memory_allocated(dev) if dev.type == "cuda" else None,
           "warmup_steps": warmup, "timed_steps": steps}
    if videos != "none":
        out["videos"] = measure_videos(setup, predicted["video"], dev, teacher=videos == "both")
    return out


def step_seconds(setup: Setup, device: torch.device, warmup: int, steps: int) -> float:
    """Mean seconds of ``steps`` training steps after ``warmup`` (the peak memory stats reset after the warm-up);
    the optimizer and its state are freed on return."""
    optimizer = torch.optim.AdamW(trained_parameters(setup), lr=1e-6)
    for _ in range(warmup):
        run_step(setup, optimizer)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def timed_steps() -> None:
        for _ in range(steps):
            run_step(setup, optimizer)

    return timed(timed_steps, device) / steps


def measure_videos(setup: Setup, predicted: dict, device: torch.device, teacher: bool = True) -> dict:
    """Seconds of one video of the step's size sampled by the student (and the teacher), each after a one-step
    warm-up video; the achieved TFLOP/s against the profile's per-video FLOPs; the measured speed-up."""
    out: dict = {"warmup_denoising_steps": 1}
    models = {"teacher": setup.teacher, "student": setup.student} if teacher else {"student": setup.student}
    for who, model in models.items():
        seconds = video_seconds(setup, model, device)
        out[who] = {"seconds": seconds, "steps": int(model.defaults.steps), "cfg": float(model.defaults.cfg),
                    "tflops": predicted[who]["total"] / seconds / 1e12}
    if teacher:
        out["speedup"] = out["teacher"]["seconds"] / out["student"]["seconds"]
    return out


def video_seconds(setup: Setup, model: Backbone, device: torch.device) -> float:
    """One video of ``model`` with its own steps and CFG, timed after a warm-up video of one denoising step."""
    from vdistill.sampling.generate import generate

    s = setup.shape
    guidance = setup.guidance if model.has_guidance_embedding else None  # a consistency student: its own w
    size = {"num_frames": s.frames, "height": s.height, "width": s.width, "guidance": guidance, "progress": False}
    generate(model, [""], steps=1, **size)
    return timed(lambda: generate(model, [""], **size), device)
