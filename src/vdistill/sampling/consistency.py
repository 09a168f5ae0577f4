"""Multistep consistency sampling (LCM, T2V-Turbo): 1, 2, 4, 8 steps with the guidance scale embedded.

At each of the student's times ``t_i`` (:func:`~vdistill.diffusion.consistency.lcm_timesteps`: evenly spaced
indices into the N-step grid it was distilled on) the student maps ``x`` to its clean estimate
``f(x, t_i) = c_skip x + c_out x0_hat``; every step but the last re-noises that estimate to ``t_{i+1}`` with fresh
noise. This is diffusers' ``LCMScheduler.step`` (tested against it), with one forward per step: the guidance
scale ``w`` goes through the student's guidance embedding, no classifier-free guidance.

A consistency student is marked as such by :func:`~vdistill.backbones.student.set_consistency_sampling`; exports record
it (``sampler`` in ``backbone.yaml``), and :func:`~vdistill.sampling.generate.generate` (so ``vdistill sample``) then
samples it here with its own default step count and guidance scale.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from vdistill.backbones.base import Backbone, TextCond, text_to
from vdistill.backbones.student import DEFAULT_GUIDANCE, DEFAULT_STEPS, consistency_sampling
from vdistill.diffusion.consistency import consistency_output, lcm_timesteps
from vdistill.errors import UserError
from vdistill.sampling.sampler import SampleResult


def seeded_noise(shape: Sequence[int], seeds: Sequence[int],
                 device: torch.device | str = "cpu") -> tuple[Tensor, list[torch.Generator]]:
    """Initial noise ``[len(seeds), *shape]`` (equal to :func:`~vdistill.sampling.sampler.initial_noise`) and one
    generator per sample, left where the noise ended, for the noise each step injects: a sample's video depends
    on its seed only, not on the batch it is in (diffusers' per-sample generator lists)."""
    gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
    noise = torch.stack([torch.randn(*shape, generator=g) for g in gens]).to(device)
    return noise, gens


@torch.no_grad()
def sample_consistency(
    model: Backbone,
    noise: Tensor,
    text: TextCond,
    steps: int | None = None,
    guidance: float | None = None,
    original_steps: int | None = None,
    generators: Sequence[torch.Generator] | None = None,
    timesteps: Tensor | None = None,
) -> SampleResult:
    """Sample from ``noise`` ``[B, C, T, H, W]`` in ``steps`` consistency steps.

    Args:
        model: a student with a guidance embedding (or without: then ``guidance`` must be None).
        noise: the initial latents, pure noise at the first time.
        text: the conditioning of the B prompts.
        steps: consistency steps (default: the model's record, else 4).
        guidance: embedded guidance scale ``w`` (LCM convention ``cond + w (cond - uncond)``; default: the model's
            record, else 7.5; ignored by a student without guidance embedding).
        original_steps: the N of the grid the student was distilled on (default: its record, else 50).
        generators: one CPU generator per sample for the injected noise (default: the global RNG).
        timesteps: explicit sampling times ``[steps]`` (overrides ``steps`` / ``original_steps``).

    Returns:
        :class:`SampleResult` with the final clean latents and the times ``[steps]`` it visited.
    """
    record = consistency_sampling(model) or {}
    original_steps = original_steps or record.get("original_steps", 50)
    if timesteps is None:
        timesteps = lcm_timesteps(model.schedule, steps or record.get("steps", DEFAULT_STEPS), original_steps)
    if guidance is None:
        guidance = record.get("guidance", DEFAULT_GUIDANCE)
    b, dev = noise.shape[0], noise.device
    if generators is not None and len(generators) != b:
        raise UserError(f"{len(generators)} generators for {b} samples")
    dtype = next(model.denoiser.parameters()).dtype
    text = text_to(text, dev, dtype)
    w = torch.full((b,), float(guidance), device=dev) if model.has_guidance_embedding else None
    clip = getattr(model.schedule, "clip_sample", None)
    x = noise.float()
    times = timesteps.float()
    for i in range(len(times)):
        t = times[i].expand(b).to(dev)
        raw = model(x.to(dtype), t, text, w)
        x0 = consistency_output(model.schedule, raw, x, t, clip=clip)
        if i == len(times) - 1:
            x = x0
            break
        if generators is None:
            eps = torch.randn_like(x0)
        else:
            eps = torch.stack([model.step_noise(x0.shape[1:], g) for g in generators]).to(dev)
        x = model.schedule.add_noise(x0, eps, times[i + 1].expand(b).to(dev))
    return SampleResult(latents=x.to(dtype), timesteps=times)
