"""Generating AccVideo's synthetic trajectory dataset ("SynVid"): the teacher's own sampler, key points only.

For each prompt ``i`` the teacher integrates its ``steps``-step ODE from the noise of seed ``seed + i`` with its
own CFG scale and solver (:func:`~vdistill.sampling.sampler.sample_latents`); the latents at ``key_indices`` of
that trajectory (AccVideo: 0, 10, ..., 50 of 50 shift-7 Euler steps, index 0 = the noise, ``steps`` = clean)
are stored with the text conditioning the teacher saw, never the whole trajectory (AccVideo paper, Sec. 4.1).
The file layout is described in :mod:`vdistill.data.shards`.

Resuming and ranks: shard ``s`` holds prompts ``[s * shard_size, (s + 1) * shard_size)`` and is a deterministic
function of those prompts and the settings, so a rerun of the same command skips the shards its manifests list
(after checking their size and header), regenerates the ones that are missing or unlisted (a crash between
writing a shard and listing it), and discards stray temp files. Rank ``r`` of ``world_size`` writes the shards
``s`` with ``s % world_size == r``; file names use the global shard index, so 1 or N processes write the same
set of files and the same ``manifest.json``: bit-identical for the same ``batch_size`` (batches never cross
shards) on deterministic kernels (same device kind; on CPU the same thread count).

Checks: the arguments (steps, key indices on the step grid, sizes) before the folder is touched or anything is
sampled; a shard whose teacher outputs are not finite (NaN, or Inf from a float16 overflow) is refused, not stored;
a failed write (a full disk) names the file and leaves the shards and manifests written before it usable.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeRemainingColumn
from rich.text import Text
from torch import Tensor

from vdistill.backbones.base import Backbone, text_to
from vdistill.config import to_config
from vdistill.data.shards import (
    MANIFEST,
    TMP,
    atomic_write_json,
    build_manifest,
    check_settings,
    check_shard,
    jsonable,
    merge,
    part_name,
    read_manifests,
    shard_name,
    union_entries,
    write_shard,
)
from vdistill.diffusion.schedules import timesteps_at
from vdistill.errors import UserError
from vdistill.sampling.sampler import initial_noise, sample_latents

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
ACCVIDEO_KEY_INDICES = (0, 10, 20, 30, 40, 50)


class RateColumn(ProgressColumn):
    """Trajectories per second."""

    def render(self, task) -> Text:
        return Text("? traj/s" if task.speed is None else f"{task.speed:.2f} traj/s", style="progress.data.speed")


def run_settings(model: Backbone, prompts: Sequence[str], key_indices: Sequence[int], steps: int | None = None,
                 cfg: float | None = None, guidance: float | None = None, seed: int = 0, shard_size: int = 64,
                 dtype: str = "bfloat16", num_frames: int | None = None, height: int | None = None,
                 width: int | None = None) -> dict:
    """Everything that determines the dataset's content, as stored in (and compared against) its manifests."""
    if dtype not in DTYPES:
        raise UserError(f"dtype {dtype!r} is not supported; choose one of {list(DTYPES)}")
    d = model.defaults
    steps = int(d.steps if steps is None else steps)
    if steps < 1:
        raise UserError(f"steps is {steps}; the teacher needs at least 1 sampling step")
    keys = check_key_indices(key_indices, steps)
    video = [num_frames or d.num_frames, height or d.height, width or d.width]
    key_t = timesteps_at(model.schedule.sampling_timesteps(steps), keys)
    teacher = to_config(model)
    if model.has_guidance_embedding:
        teacher["guidance_embedding"] = model.guidance_proj.in_features
    return jsonable({
        "teacher": teacher,
        "schedule": model.schedule.describe(),
        "latent_shape": list(model.latent_shape(*video)),
        "video_size": video,
        "steps": steps,
        "key_indices": keys,
        "key_timesteps": [float(t) for t in key_t],
        "cfg": float(d.cfg if cfg is None else cfg),
        "guidance": None if guidance is None else float(guidance),
        "seed": int(seed),
        "shard_size": int(shard_size),
        "dtype": dtype,
        "num_prompts": len(prompts),
        "prompts_sha256": hashlib.sha256(json.dumps(list(prompts)).encode()).hexdigest(),
    })


def check_key_indices(key_indices: Sequence[int], steps: int) -> list[int]:
    """``key_indices`` as ints: at least two, strictly increasing, on the ``steps``-step grid (0 = the noise,
    ``steps`` = clean), else a :class:`UserError` (before anything is sampled)."""
    keys = [int(i) for i in key_indices]
    if len(keys) < 2:
        raise UserError(f"key_indices {keys}: give at least two step indices (a trajectory's start and end, e.g. "
                        f"0,{steps}); distillation learns the jumps between them")
    if any(b <= a for a, b in zip(keys, keys[1:])):
        raise UserError(f"key_indices must be strictly increasing step indices, got {keys}")
    bad = [i for i in keys if not 0 <= i <= steps]
    if bad:
        raise UserError(f"key_indices {bad} are outside the {steps}-step grid (valid 0..{steps}: 0 = the noise, "
                        f"{steps} = clean)")
    return keys


def check_finite(tensors: dict[str, Tensor], lo: int, hi: int, dtype: str) -> None:
    """Refuse to store a shard whose teacher outputs (latents, text conditioning) hold NaN or Inf."""
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise UserError(f"the teacher's {', '.join(bad)} for prompts {lo}..{hi - 1} are not finite (NaN or Inf in "
                        f"{dtype}): not stored. Rerun with --dtype float32 (float16 overflows past 65504) or use "
                        "another teacher")


def _discard_temps(out: Path, mine: set[int], rank: int) -> None:
    """Remove the temp files a crash of this rank may have left (other ranks' files are left alone)."""
    for p in out.glob(f"*{TMP}"):
        m = re.fullmatch(r"shard-(\d+)\.safetensors\..*", p.name)
        if (m and int(m.group(1)) in mine) or p.name.startswith(f"{part_name(rank)}.") or (
                rank == 0 and p.name.startswith(f"{MANIFEST}.")):
            p.unlink(missing_ok=True)


def _make_shard(model: Backbone, prompts: Sequence[str], lo: int, hi: int, settings: dict, batch_size: int,
                uncond, on_batch) -> dict[str, Tensor]:
    """Tensors of the shard holding samples ``[lo, hi)``: ``latents`` ``[n, K, C, T, H, W]``, ``text.*``,
    ``seeds``, ``index``."""
    device = next(model.denoiser.parameters()).device
    store = DTYPES[settings["dtype"]]
    keys, seed = settings["key_indices"], settings["seed"]
    latents, texts = [], []
    for b in range(lo, hi, batch_size):
        chunk = list(prompts[b: min(b + batch_size, hi)])
        text = model.encode_text(chunk)
        noise = initial_noise(settings["latent_shape"], range(seed + b, seed + b + len(chunk)), device)
        res = sample_latents(model, noise, text, steps=settings["steps"], uncond=uncond, cfg=settings["cfg"],
                             guidance=settings["guidance"], capture=keys)
        latents.append(torch.stack([res.trajectory[i] for i in keys], dim=1).to("cpu", store))
        texts.append(text_to(text, "cpu", store))
        on_batch(len(chunk))
    index = torch.arange(lo, hi, dtype=torch.int64)
    tensors = {"latents": torch.cat(latents), "seeds": index + seed, "index": index}
    tensors.update({f"text.{k}": torch.cat([t[k] for t in texts]) for k in texts[0]})
    return tensors


@torch.no_grad()
def synthesize(
    model: Backbone,
    prompts: Sequence[str],
    out: str | Path,
    key_indices: Sequence[int] = ACCVIDEO_KEY_INDICES,
    steps: int | None = None,
    cfg: float | None = None,
    guidance: float | None = None,
    seed: int = 0,
    shard_size: int = 64,
    batch_size: int = 16,
    dtype: str = "bfloat16",
    rank: int = 0,
    world_size: int = 1,
    progress: bool = True,
    num_frames: int | None = None,
    height: int | None = None,
    width: int | None = None,
) -> dict:
    """Write (or resume) the key points of the teacher's trajectories for ``prompts`` to the folder ``out``.

    Args:
        model: the teacher, on the device to sample on.
        prompts: one trajectory per prompt; prompt ``i`` uses noise seed ``seed + i``.
        out: dataset folder (created; an existing one must hold the same settings, else a UserError).
        key_indices: step indices kept (0 = noise, ``steps`` = clean); AccVideo's 0, 10, ..., 50.
        steps, cfg: the teacher's sampling settings (default: its own ``model.defaults``).
        guidance: embedded guidance scale for models with a guidance embedding (None: none).
        seed: base noise seed.
        shard_size: samples per shard file (the unit of resuming).
        batch_size: samples per teacher forward (at most ``shard_size`` are used: batches never cross shards).
        dtype: storage dtype of the float tensors (``bfloat16``, ``float16``, ``float32``); int/bool kept.
        rank, world_size: this process writes the shards ``s`` with ``s % world_size == rank``.
        progress: show a progress bar (trajectories per second) and print a summary.
        num_frames, height, width: video size in pixels (default: the teacher's).

    Returns:
        The merged manifest of the folder (all ranks' completed shards so far; ``complete`` once all are done).

    Raises:
        UserError: bad arguments (before anything is sampled), a folder made with other settings, a corrupt
            shard, teacher outputs that are not finite (the shards before them are kept), a failed write.
    """
    if not prompts:
        raise UserError("no prompts to synthesize")
    if world_size < 1 or not 0 <= rank < world_size:
        raise UserError(f"rank {rank} is not in [0, world_size={world_size})")
    if shard_size < 1 or batch_size < 1:
        raise UserError(f"shard_size and batch_size must be >= 1, got {shard_size} and {batch_size}")
    # run_settings checks steps and key_indices: all of this before the folder is touched or anything sampled
    settings = run_settings(model, prompts, key_indices, steps, cfg, guidance, seed, shard_size, dtype,
                            num_frames, height, width)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    found = read_manifests(out)
    check_settings(out, found, settings)
    num_shards = math.ceil(len(prompts) / shard_size)
    mine = list(range(rank, num_shards, world_size))
    _discard_temps(out, set(mine), rank)
    listed = union_entries(out, found)
    own = {e["index"]: e for p, data in found if p.name == part_name(rank) for e in data["shards"]}
    todo = []
    for s in mine:
        entry = listed.get(s)
        if entry is None or not (out / entry["file"]).is_file():
            todo.append(s)
            continue
        check_shard(out / entry["file"], entry, settings)

    part = out / part_name(rank)

    def write_part() -> None:
        atomic_write_json(part, {**build_manifest(settings, own, num_shards), "rank": rank,
                                 "world_size": world_size})

    write_part()  # settings first: a later run with other settings is refused even before any shard exists
    uncond = model.encode_text([""]) if settings["cfg"] != 1.0 else None
    total = sum(min(shard_size, len(prompts) - s * shard_size) for s in todo)
    columns = (TextColumn(f"[bold]synthesizing (rank {rank})"), BarColumn(), MofNCompleteColumn(), RateColumn(),
               TimeRemainingColumn())
    was_training = model.training
    model.eval()
    start = time.perf_counter()
    try:
        with Progress(*columns, disable=not progress) as bar:
            task = bar.add_task("synthesizing", total=total)
            for s in todo:
                lo, hi = s * shard_size, min((s + 1) * shard_size, len(prompts))
                tensors = _make_shard(model, prompts, lo, hi, settings, batch_size, uncond,
                                      lambda n: bar.advance(task, n))
                check_finite(tensors, lo, hi, settings["dtype"])
                info = write_shard(out / shard_name(s), tensors, {"prompts": json.dumps(list(prompts[lo:hi]))})
                own[s] = {"index": s, "file": shard_name(s), "start": lo, "count": hi - lo, **info}
                write_part()
    finally:
        model.train(was_training)
    manifest = merge(out)
    if progress:
        _summary(manifest, total, time.perf_counter() - start, out)
    return manifest


def _summary(manifest: dict, written: int, seconds: float, out: Path) -> None:
    s = manifest["settings"]
    key_bytes = len(s["key_indices"]) * math.prod(s["latent_shape"]) * DTYPES[s["dtype"]].itemsize
    per = manifest["bytes_per_sample"] or 0
    print(f"wrote {written} trajectories in {seconds:.1f} s ({written / max(seconds, 1e-9):.2f}/s); {out}: "
          f"{manifest['num_samples']}/{s['num_prompts']} samples, {len(manifest['shards'])}/"
          f"{manifest['num_shards']} shards; {per / 1e6:.3f} MB per sample "
          f"({key_bytes / 1e6:.3f} MB key latents, the rest text conditioning and headers)")
