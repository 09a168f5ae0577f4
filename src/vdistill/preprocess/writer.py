"""Encode real clips once with the teacher: VAE latents and text conditioning in shards (``vdistill preprocess``).

Each usable row ``i`` of the captions file (:class:`~vdistill.data.videos.VideoClipDataset`'s order) gives one clip,
decoded by :func:`~vdistill.data.decode.read_clip` in DataLoader workers, starting at the frame VideoClips would
pick in its first epoch: the start is drawn by ``numpy.random.default_rng([seed, 0, i, 0])`` (VideoClips' rule
for epoch 0 and no replacement; ``random_start=False``: the first frame). A file that cannot be read or is too
short is skipped and listed in the manifest with its reason, never replaced by the next row, so the cache holds
exactly VideoClips' epoch-0 clips of the readable files.

What is stored (file layout: :mod:`vdistill.data.latent_cache`):

* ``latents``: the VAE posterior's MEAN, what :meth:`Backbone.encode_video` returns and consistency distillation
  encodes on the fly, so a fit on the cache computes the loss a fit on the videos does. FastVideo's preprocessing
  stores the mean too (``vae.encode(pixels).mean``, ``fastvideo/pipelines/preprocess/preprocess_pipeline_base.py``);
  T2V-Turbo-v2's ``preprocess_no_motion_mp4.py`` stores ONE posterior sample (``vae.encode(x).sample()``, float16),
  a single draw frozen for every epoch, which adds no augmentation over the mean and would make the bytes depend
  on a noise seed;
* the captions' text conditioning (``text.<key>``, zero tails cut losslessly) and the empty prompt's (CFG's
  unconditional branch), so a fit needs neither the VAE encoder nor the text encoder.

Only the teacher's frozen parts (VAE, text encoders) are moved to ``device``; its denoiser stays where it was
loaded (the CPU), since encoding never runs it.

Resuming and ranks are :mod:`vdistill.synth.writer`'s: shard ``s`` holds positions ``[s * shard_size, (s + 1) *
shard_size)`` and is a deterministic function of them and the settings; a rerun of the same command skips the
shards its manifests list, rewrites the missing or unlisted ones and removes the temp files of dead writers; rank
``r`` of ``world_size`` writes the shards ``s % world_size == r`` (rank 0 also writes ``uncond.safetensors``), so
1 or N processes write the same files, bit-identical for the same ``batch_size`` (batches never cross shards) on
deterministic kernels. A folder written with other settings (another teacher, size, fps, captions file, ...) is
refused in one line naming what differs.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeRemainingColumn
from rich.text import Text
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from vdistill.backbones.base import Backbone, text_to
from vdistill.config import to_config
from vdistill.data.decode import ClipError, read_clip
from vdistill.data.latent_cache import (
    STORAGE_DTYPES,
    UNCOND,
    build_manifest,
    check_settings,
    check_shard,
    dtype_text,
    merge,
    read_manifests,
    trim_tail,
    union_entries,
)
from vdistill.data.shards import MANIFEST, atomic_write_json, file_sha256, jsonable, part_name, shard_name, write_shard
from vdistill.data.videos import REASONS, VideoClipDataset
from vdistill.errors import UserError
from vdistill.files import TMP, recover


class RateColumn(ProgressColumn):
    """Clips per second."""

    def render(self, task) -> Text:
        return Text("? clips/s" if task.speed is None else f"{task.speed:.2f} clips/s", style="progress.data.speed")


class ClipReader(Dataset):
    """Position ``i`` of ``clips`` -> ``(i, frames uint8 [T, H, W, 3] or None, reason)``, decoded with VideoClips'
    epoch-0 start frame (module docstring)."""

    def __init__(self, clips: VideoClipDataset) -> None:
        self.clips = clips

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, i: int) -> tuple[int, Tensor | None, str]:
        c = self.clips
        rng = np.random.default_rng([c.seed, 0, i, 0]) if c.random_start else None
        try:
            return i, torch.from_numpy(read_clip(c.path(int(c.rows[i])), c.spec, rng)), ""
        except ClipError as err:
            return i, None, err.reason


def _as_list(items: list) -> list:
    return items


def text_spec(text: dict[str, Tensor]) -> dict[str, dict]:
    """``{key: {"shape": one row's shape, "dtype": name}}`` of a conditioning as stored."""
    return {k: {"shape": list(v.shape[1:]), "dtype": dtype_text(v.dtype)} for k, v in sorted(text.items())}


def cache_settings(model: Backbone, clips: VideoClipDataset, uncond: dict[str, Tensor], shard_size: int,
                   dtype: str) -> dict:
    """Everything that determines the cache's content, as stored in (and compared against) its manifests.
    ``uncond``: the empty prompt's conditioning as stored (its shapes and dtypes are the cache's)."""
    spec = clips.spec
    video = [spec.num_frames, spec.height, spec.width]
    teacher = to_config(model)
    return jsonable({
        "teacher": teacher,
        "schedule": model.schedule.describe(),
        "latent_shape": list(model.latent_shape(*video)),
        "latents": "posterior mean",
        "video_size": video,
        "fps": spec.fps,
        "stride": None if spec.fps else spec.stride,
        "random_start": clips.random_start,
        "seed": clips.seed,
        "text": text_spec(uncond),
        "dtype": dtype,
        "shard_size": int(shard_size),
        "usable_rows": len(clips),
        "num_rows": len(clips.status),
        "captions_sha256": file_sha256(clips.captions_file),
    })


def dropped_rows(clips: VideoClipDataset) -> list[list]:
    """``[row, name, reason]`` of every row the captions file itself shows bad (no path, empty caption, ...)."""
    bad = torch.nonzero(clips.status).flatten().tolist()
    return [[r, clips.names[r], REASONS[int(clips.status[r])]] for r in bad]


def _discard_temps(out: Path, mine: set[int], rank: int) -> None:
    """Remove the temp files a killed writer of this rank left (each through :func:`vdistill.files.recover`, which
    leaves a live writer's alone)."""
    for p in out.glob(f"*{TMP}"):
        final = re.sub(r"\.[0-9a-f]{8}\.tmp$", "", p.name)
        m = re.fullmatch(r"shard-(\d+)\.safetensors", final)
        if (m and int(m.group(1)) in mine) or final == part_name(rank) or (rank == 0 and final in (MANIFEST, UNCOND)):
            recover(out / final)


def check_finite(tensors: dict[str, Tensor], where: str, dtype: str) -> None:
    """Refuse to store teacher outputs (latents, text conditioning) that hold NaN or Inf."""
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise UserError(f"the teacher's {', '.join(bad)} for {where} are not finite (NaN or Inf in {dtype}): not "
                        "stored. Rerun with --dtype float32 (float16 overflows past 65504) or --model-dtype float32")


def stored_text(text: dict[str, Tensor], store: torch.dtype) -> dict[str, Tensor]:
    """A conditioning as the cache stores it: on the CPU, floats in ``store``, each tensor's zero tail cut."""
    return {f"text.{k}": trim_tail(v) for k, v in text_to(text, "cpu", store).items()}


def encode_batch(model: Backbone, frames: list[Tensor], captions: list[str], store: torch.dtype,
                 device: torch.device) -> tuple[Tensor, dict[str, Tensor]]:
    """Latents ``[B, C, T', H', W']`` and text conditioning of decoded clips (uint8 ``[T, H, W, 3]`` each), on the
    CPU in ``store``. Pixels become ``[B, T, 3, H, W]`` in [0, 1] exactly as VideoClips' batches are."""
    videos = torch.stack(frames).to(device).permute(0, 1, 4, 2, 3).float().div_(255)
    latents = model.encode_video(videos).to("cpu", store)
    return latents, text_to(model.encode_text(captions), "cpu", store)


def _write_uncond(out: Path, uncond: dict[str, Tensor], store: torch.dtype) -> dict:
    tensors = stored_text(uncond, store)
    check_finite(tensors, "the empty prompt", dtype_text(store))
    info = write_shard(out / UNCOND, tensors, {})
    return {"file": UNCOND, **info}


def _shard_tensors(parts: list[tuple[Tensor, dict[str, Tensor]]], index: list[int], rows: list[int]) -> dict:
    text = {k: torch.cat([t[k] for _, t in parts]) for k in parts[0][1]}
    tensors = {"latents": torch.cat([lat for lat, _ in parts]), **{f"text.{k}": trim_tail(v) for k, v in text.items()}}
    tensors["index"] = torch.tensor(index, dtype=torch.int64)
    tensors["row"] = torch.tensor(rows, dtype=torch.int64)
    return tensors


def _empty_shard(settings: dict) -> tuple[Tensor, dict[str, Tensor]]:
    """Zero-row latents and text of a shard whose every clip was skipped (it is still written: it is done)."""
    latents = torch.zeros(0, *settings["latent_shape"], dtype=getattr(torch, settings["dtype"]))
    return latents, {k: torch.zeros(0, *s["shape"], dtype=getattr(torch, s["dtype"]))
                     for k, s in settings["text"].items()}


def encode_shards(model: Backbone, clips: VideoClipDataset, todo: list[int], settings: dict, batch_size: int,
                  workers: int, device: torch.device, advance: Callable[[int], None]):
    """Yield ``(shard index, its tensors, its captions, its skipped clips [row, name, reason])`` for each shard of
    ``todo`` in order; clips are decoded by ``workers`` DataLoader processes, ``batch_size`` clips per encode (the
    batches never cross shards)."""
    n, size, store = len(clips), settings["shard_size"], getattr(torch, settings["dtype"])
    spans = {s: (s * size, min((s + 1) * size, n)) for s in todo}
    batches = [list(range(b, min(b + batch_size, hi))) for lo, hi in spans.values() for b in range(lo, hi, batch_size)]
    if not batches:
        return
    loaded = iter(DataLoader(ClipReader(clips), batch_sampler=batches, num_workers=workers, collate_fn=_as_list))
    for s in todo:
        lo, hi = spans[s]
        parts, index, captions, skipped = [], [], [], []
        for _ in range(math.ceil((hi - lo) / batch_size)):
            items = next(loaded)
            good = [(i, f) for i, f, _ in items if f is not None]
            skipped += [[int(clips.rows[i]), clips.names[int(clips.rows[i])], why] for i, f, why in items if f is None]
            if good:
                texts = [clips.texts[int(clips.rows[i])] for i, _ in good]
                parts.append(encode_batch(model, [f for _, f in good], texts, store, device))
                index += [i for i, _ in good]
                captions += texts
            advance(len(items))
        tensors = _shard_tensors(parts or [_empty_shard(settings)], index, [int(clips.rows[i]) for i in index])
        check_finite(tensors, f"clips {lo}..{hi - 1}", settings["dtype"])
        yield s, tensors, captions, skipped


def _plan(out: Path, found: list, settings: dict, mine: list[int]) -> list[int]:
    """The shards of ``mine`` still to write (not listed, or listed but gone); the listed ones are checked."""
    listed = union_entries(out, found)
    todo = []
    for s in mine:
        entry = listed.get(s)
        if entry is None or not (out / entry["file"]).is_file():
            todo.append(s)
        else:
            check_shard(out / entry["file"], entry, settings)
    return todo


class RankManifest:
    """This rank's ``manifest-r{rank}.json``: the settings, its completed shards and (rank 0) the empty prompt's
    file, rewritten atomically after each shard so that a kill loses at most the shard being written."""

    def __init__(self, out: Path, found: list[tuple[Path, dict]], settings: dict, num_shards: int, dropped: list,
                 rank: int, world_size: int) -> None:
        self.path = out / part_name(rank)
        mine = [data for p, data in found if p.name == self.path.name]
        self.shards = {e["index"]: e for data in mine for e in data["shards"]}
        self.uncond = next((data["uncond"] for data in mine if data.get("uncond")), None)
        self.settings, self.num_shards, self.dropped = settings, num_shards, dropped
        self.rank, self.world_size = rank, world_size

    def write(self) -> None:
        manifest = build_manifest(self.settings, self.shards, self.num_shards, self.dropped, self.uncond)
        atomic_write_json(self.path, {**manifest, "rank": self.rank, "world_size": self.world_size})

    def add(self, entry: dict) -> None:
        self.shards[entry["index"]] = entry
        self.write()


def check_arguments(clips: VideoClipDataset, shard_size: int, batch_size: int, dtype: str, rank: int,
                    world_size: int, workers: int) -> None:
    if dtype not in STORAGE_DTYPES:
        raise UserError(f"dtype {dtype!r} is not supported; choose one of {list(STORAGE_DTYPES)}")
    if world_size < 1 or not 0 <= rank < world_size:
        raise UserError(f"rank {rank} is not in [0, world_size={world_size})")
    if shard_size < 1 or batch_size < 1 or workers < 0:
        raise UserError(f"shard_size and batch_size must be >= 1 and workers >= 0, got {shard_size}, {batch_size} "
                        f"and {workers}")
    if len(clips) == 0:
        raise UserError(f"captions file {str(clips.captions_file)!r} has no usable row: {clips.report()}")


@torch.no_grad()
def preprocess(model: Backbone, clips: VideoClipDataset, out: str | Path, shard_size: int = 64, batch_size: int = 1,
               dtype: str = "bfloat16", rank: int = 0, world_size: int = 1, workers: int = 4,
               device: str | torch.device | None = None, progress: bool = True) -> dict:
    """Write (or resume) the latent cache of ``clips`` in the folder ``out`` (module docstring).

    Args:
        model: the teacher (its denoiser is never run).
        clips: the rows of the captions file and the clip to take from each video (frames, size, fps, start).
        out: the cache folder (created; an existing one must hold the same settings, else a UserError).
        shard_size: clips per shard file (the unit of resuming).
        batch_size: clips per VAE encode (at most ``shard_size`` are used: batches never cross shards).
        dtype: storage dtype of the float tensors (``bfloat16``, ``float16``, ``float32``).
        rank, world_size: this process writes the shards ``s`` with ``s % world_size == rank``.
        workers: DataLoader processes decoding the videos (0: in this process).
        device: where the VAE and text encoder run (None: where the model is).
        progress: show a progress bar (clips per second) and print a summary.

    Returns:
        The merged manifest of the folder (``complete`` once every rank is done).
    """
    check_arguments(clips, shard_size, batch_size, dtype, rank, world_size, workers)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    for part in model.frozen_parts():  # the VAE and text encoders; the denoiser is not needed here
        part.to(device)
    store = getattr(torch, dtype)
    uncond = model.encode_text([""])
    settings = cache_settings(model, clips, text_to(uncond, "cpu", store), shard_size, dtype)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    found = read_manifests(out)
    check_settings(out, found, settings)
    num_shards = math.ceil(len(clips) / shard_size)
    mine = list(range(rank, num_shards, world_size))
    _discard_temps(out, set(mine), rank)
    todo = _plan(out, found, settings, mine)
    part = RankManifest(out, found, settings, num_shards, dropped_rows(clips), rank, world_size)
    part.write()  # settings first: a later run with other settings is refused even before any shard exists
    if rank == 0 and (part.uncond is None or not (out / UNCOND).is_file()
                      or (out / UNCOND).stat().st_size != part.uncond["bytes"]):
        part.uncond = _write_uncond(out, uncond, store)
        part.write()
    total = sum(min(shard_size, len(clips) - s * shard_size) for s in todo)
    columns = (TextColumn(f"[bold]encoding (rank {rank})"), BarColumn(), MofNCompleteColumn(), RateColumn(),
               TimeRemainingColumn())
    was_training = model.training
    model.eval()
    start, written = time.perf_counter(), 0
    try:
        with Progress(*columns, disable=not progress) as bar:
            task = bar.add_task("encoding", total=total)
            for s, tensors, captions, skipped in encode_shards(model, clips, todo, settings, batch_size, workers,
                                                               device, lambda k: bar.advance(task, k)):
                info = write_shard(out / shard_name(s), tensors, {"prompts": json.dumps(captions)})
                lo = s * shard_size
                part.add({"index": s, "file": shard_name(s), "start": lo, "rows": min(shard_size, len(clips) - lo),
                          "count": len(captions), "skipped": skipped, **info})
                written += len(captions)
    finally:
        model.train(was_training)
    manifest = merge(out)
    if progress:
        print(summary(manifest, written, time.perf_counter() - start, out))
    return manifest


def summary(manifest: dict, encoded: int, seconds: float, out: Path) -> str:
    """One line: what this run encoded, what the folder holds, what was skipped, bytes per clip."""
    s = manifest["settings"]
    latent_bytes = math.prod(s["latent_shape"]) * getattr(torch, s["dtype"]).itemsize
    per = manifest["bytes_per_clip"] or 0
    bad = manifest["skipped"]
    names = ", ".join(f"{name} ({why})" for _, name, why in bad[:5]) + (", ..." if len(bad) > 5 else "")
    return (f"encoded {encoded} clips in {seconds:.1f} s ({encoded / max(seconds, 1e-9):.2f}/s); {out}: "
            f"{manifest['num_clips']} clips in {len(manifest['shards'])}/{manifest['num_shards']} shards, "
            f"{len(bad)} skipped{': ' + names if bad else ''}; {per / 1e6:.3f} MB per clip "
            f"({latent_bytes / 1e6:.3f} MB latents, the rest text conditioning and headers)")
