"""Prompts -> videos with a backbone: text encoding, per-prompt seeded noise, sampling, decoding, timing."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch import Tensor

from vdistill.backbones.base import Backbone
from vdistill.backbones.student import consistency_sampling
from vdistill.errors import UserError
from vdistill.sampling.consistency import sample_consistency, seeded_noise
from vdistill.sampling.sampler import initial_noise, sample_latents


@dataclass
class Generated:
    """``videos`` ``[N, T, 3, H, W]`` in [0, 1]; ``seconds``: wall-clock time of the whole generation."""

    videos: Tensor
    prompts: list[str]
    seconds: float


def video_size(model: Backbone, num_frames: int | None = None, height: int | None = None, width: int | None = None,
               what: str = "video size") -> tuple[int, int, int]:
    """``(frames, height, width)`` in pixels: the values given, the model's own (``model.defaults``) where ``None``,
    checked against the family's latent grid (its ``latent_shape``: e.g. Wan's ``1 + 4k`` frames and multiples of
    16 pixels) before anything is sampled; a size it refuses is one line naming ``what`` (the flags or keys)."""
    d = model.defaults
    size = (d.num_frames if num_frames is None else num_frames, d.height if height is None else height,
            d.width if width is None else width)
    try:
        model.latent_shape(*size)
    except UserError as err:
        raise UserError(f"{what} {size[0]} x {size[1]} x {size[2]} (frames x height x width): {err}") from None
    return size


def denoiser_dtype(model: Backbone) -> torch.dtype:
    """The dtype the denoiser computes in (a diffusers model's own ``dtype`` skips the modules it keeps in float32)."""
    dtype = getattr(model.denoiser, "dtype", None)
    return dtype if isinstance(dtype, torch.dtype) else next(model.denoiser.parameters()).dtype


@torch.no_grad()
def generate(
    model: Backbone,
    prompts: list[str],
    steps: int | None = None,
    cfg: float | None = None,
    guidance: float | None = None,
    seed: int = 0,
    batch_size: int = 16,
    timesteps: Tensor | None = None,
    num_frames: int | None = None,
    height: int | None = None,
    width: int | None = None,
    progress: bool = True,
) -> Generated:
    """Sample one video per prompt (prompt ``i`` uses noise seed ``seed + i``, whatever the batching).

    ``cfg`` defaults to the model's own scale; ``cfg = 1`` disables classifier-free guidance (students).
    ``num_frames``, ``height``, ``width``: the video size in pixels (default: the model's own, see
    :func:`video_size`).
    A consistency student (:func:`~vdistill.backbones.student.set_consistency_sampling`) is sampled with the
    multistep consistency sampler, its embedded guidance scale (``guidance``, default: its own) and no CFG.
    """
    consistency = consistency_sampling(model) is not None
    d = model.defaults
    cfg = d.cfg if cfg is None else cfg
    shape = model.latent_shape(*video_size(model, num_frames, height, width))
    device = next(model.denoiser.parameters()).device
    start = time.perf_counter()
    uncond = model.encode_text([""]) if cfg != 1.0 and not consistency else None
    out = []
    columns = (TextColumn("[bold]sampling"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, disable=not progress, transient=True) as bar:
        task = bar.add_task("sampling", total=len(prompts))
        for lo in range(0, len(prompts), batch_size):
            chunk = prompts[lo: lo + batch_size]
            seeds = range(seed + lo, seed + lo + len(chunk))
            if consistency:  # per-sample generators: the injected noise depends on the seed, not the batching
                noise, gens = seeded_noise(shape, seeds, device)
                res = sample_consistency(model, noise, model.encode_text(chunk), steps=steps, guidance=guidance,
                                         generators=gens, timesteps=timesteps)
            else:
                noise = initial_noise(shape, seeds, device)
                res = sample_latents(model, noise, model.encode_text(chunk), steps=steps, timesteps=timesteps,
                                     uncond=uncond, cfg=cfg, guidance=guidance)
            out.append(model.decode_latents(res.latents).float().cpu())
            bar.advance(task, len(chunk))
    return Generated(torch.cat(out), list(prompts), time.perf_counter() - start)
