"""Files of a latent cache (``vdistill preprocess``): shards of teacher-encoded clips, manifests and their checks.

A cache folder holds

* ``shard-{s:05d}.safetensors``: the clips at positions ``[s * shard_size, (s + 1) * shard_size)`` of the captions
  file's usable rows (those :class:`~vdistill.data.videos.VideoClipDataset` keeps, in file order), less the ones
  whose video could not be read, with the tensors

  - ``latents`` ``[n, C, T', H', W']``: the teacher VAE's posterior mean (:meth:`Backbone.encode_video`),
  - ``text.<key>`` ``[n, L', ...]``: each tensor of the teacher's text conditioning of the captions, cut after the
    last position along the token axis (dim 1) where any row of the shard is non-zero; readers pad the zeros back
    to the full ``L`` (:func:`pad_tail`), so this is lossless for every tensor and saves most of the bytes of
    conditionings zeroed past each prompt's length (Wan's UMT5 states: 512 positions, captions use tens),
  - ``index`` int64 ``[n]`` (position among the usable rows) and ``row`` int64 ``[n]`` (data row of the captions
    file, 0 = the first row after a CSV header),

  and the metadata ``{"prompts": <JSON list of the captions>}`` (one key: deterministic bytes, see
  :func:`vdistill.data.shards.write_shard`);
* ``uncond.safetensors``: ``text.<key>`` ``[1, L', ...]``, the empty prompt's conditioning (the unconditional
  branch of classifier-free guidance), written by rank 0;
* ``manifest-r{rank}.json`` (what rank ``rank`` wrote) and ``manifest.json`` (their union), as in
  :mod:`vdistill.data.shards`. Each shard entry lists the clips it skipped (``[row, name, reason]``); ``dropped``
  lists the rows the captions file itself shows bad (no path, empty caption, ...).

Manifests are untrusted: :func:`load_manifest` checks the type of every field a reader uses before it is used, and
that every file named is exactly ``shard_name(index)`` or ``uncond.safetensors`` (never another path). Shards are
checked when opened (:func:`check_shard`: size, header, shapes, dtypes, positions; the sha256 once per process).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from torch import Tensor

from vdistill.data import shards
from vdistill.data.shards import (
    ENTRY_FIELDS,
    MANIFEST,
    ShardError,
    atomic_write_json,
    file_sha256,
    open_shard,
    shard_name,
)
from vdistill.errors import UserError

FORMAT = "vdistill-latents/1"
UNCOND = "uncond.safetensors"
STORAGE_DTYPES = ("bfloat16", "float16", "float32")
#: safetensors' dtype names -> torch's
DTYPE_NAMES = {"BF16": "bfloat16", "F16": "float16", "F32": "float32", "F64": "float64", "I64": "int64",
               "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool"}


def dtype_text(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


# -- lossless trimming of the text conditioning ---------------------------------------------------------------
def trim_tail(x: Tensor) -> Tensor:
    """``x`` ``[n, L, ...]`` cut after the last position along dim 1 where any row is non-zero (at least one kept);
    tensors of fewer than 2 dims as they are."""
    if x.ndim < 2 or x.shape[1] == 0:
        return x
    used = (x != 0).reshape(x.shape[0], x.shape[1], -1).any(dim=2).any(dim=0)  # [L]
    keep = int(used.nonzero().max()) + 1 if bool(used.any()) else 1
    return x[:, :keep].contiguous()


def pad_tail(x: Tensor, length: int) -> Tensor:
    """``x`` ``[n, L', ...]`` padded with zeros along dim 1 to ``length`` (the inverse of :func:`trim_tail`)."""
    if x.ndim < 2 or x.shape[1] == length:
        return x
    return torch.cat([x, x.new_zeros(x.shape[0], length - x.shape[1], *x.shape[2:])], dim=1)


# -- errors -----------------------------------------------------------------------------------------------------
def corrupt(path: Path, why: str) -> ShardError:
    return ShardError(f"cache file {str(path)!r} is corrupt ({why}); delete it and rerun the same vdistill "
                      "preprocess command to rewrite it")


def _bad_field(path: Path, where: str, value: object, expected: str) -> UserError:
    shown = "absent" if value is _ABSENT else repr(value)[:200]
    return UserError(f"manifest {str(path)!r}: {where} is {shown}, expected {expected}; delete the manifest and "
                     "rerun the vdistill preprocess command")


# -- manifest schema ----------------------------------------------------------------------------------------------
_ABSENT = object()


def _natural(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _positives(length: int | None = None, empty: bool = False):
    return lambda v: (isinstance(v, list) and (empty or len(v) > 0) and length in (None, len(v))
                      and all(_natural(x) and x > 0 for x in v))


def _text_spec(v: object) -> bool:
    """``{key: {"shape": [L, ...], "dtype": name}}``: the shape of one clip's row of each text tensor, its dtype."""
    return isinstance(v, dict) and len(v) > 0 and all(
        isinstance(k, str) and re.fullmatch(r"[A-Za-z0-9_]+", k) and isinstance(s, dict)
        and _positives(empty=True)(s.get("shape")) and s.get("dtype") in DTYPE_NAMES.values() for k, s in v.items())


def _skipped(v: object) -> bool:
    return isinstance(v, list) and all(
        isinstance(x, list) and len(x) == 3 and _natural(x[0]) and isinstance(x[1], str) and isinstance(x[2], str)
        for x in v)


SETTINGS_FIELDS = {
    "latent_shape": (_positives(), "a list of positive integers"),
    "video_size": (_positives(3), "3 positive integers [frames, height, width]"),
    "dtype": (lambda v: v in STORAGE_DTYPES, f"one of {', '.join(map(repr, STORAGE_DTYPES))}"),
    "shard_size": (lambda v: _natural(v) and v > 0, "a positive integer"),
    "usable_rows": (_natural, "a non-negative integer"),
    "schedule": (lambda v: isinstance(v, dict), "an object"),
    "text": (_text_spec, "an object {key: {shape: [positive integers], dtype: name}}"),
}
CACHE_ENTRY_FIELDS = {**ENTRY_FIELDS, "rows": (_natural, "a non-negative integer"),
                      "skipped": (_skipped, "a list of [row, name, reason]")}
UNCOND_FIELDS = {k: ENTRY_FIELDS[k] for k in ("sha256", "bytes", "file")}


def _check_fields(path: Path, obj: object, fields: dict, where: str) -> None:
    if not isinstance(obj, dict):
        raise _bad_field(path, where, obj, "an object")
    for key, (ok, expected) in fields.items():
        if not ok(obj.get(key)):
            raise _bad_field(path, f"{where}.{key}", obj.get(key, _ABSENT), expected)


def check_manifest(path: Path, data: dict) -> None:
    """Refuse a manifest whose fields have the wrong type or that names a file other than its own shards'
    (``shard_name(index)``) and ``uncond.safetensors``."""
    form = data.get("format") if isinstance(data, dict) else None
    if form != FORMAT:
        raise UserError(f"{str(path)!r} is not a vdistill latent-cache manifest (format {repr(form)[:80]}, "
                        f"expected {FORMAT!r}); give the folder written by vdistill preprocess")
    _check_fields(path, data.get("settings"), SETTINGS_FIELDS, "settings")
    num_shards = data.get("num_shards", _ABSENT)
    if not _natural(num_shards):
        raise _bad_field(path, "num_shards", num_shards, "a non-negative integer")
    for key, ok in (("shards", lambda v: isinstance(v, list)), ("dropped", _skipped)):
        if not ok(data.get(key)):
            raise _bad_field(path, key, data.get(key, _ABSENT), "a list")
    if data.get("uncond") is not None:
        _check_fields(path, data["uncond"], UNCOND_FIELDS, "uncond")
        if data["uncond"]["file"] != UNCOND:
            raise _bad_field(path, "uncond.file", data["uncond"]["file"], repr(UNCOND))
    for i, entry in enumerate(data["shards"]):
        _check_fields(path, entry, CACHE_ENTRY_FIELDS, f"shards[{i}]")
        if entry["index"] >= num_shards:
            raise _bad_field(path, f"shards[{i}].index", entry["index"], f"below num_shards ({num_shards})")
        if entry["file"] != shard_name(entry["index"]):
            raise _bad_field(path, f"shards[{i}].file", entry["file"], f"{shard_name(entry['index'])!r} (a manifest "
                             "may only name the shard files of its own folder)")


def read_manifests(root: Path) -> list[tuple[Path, dict]]:
    """``manifest.json`` and every ``manifest-r*.json`` of ``root``, parsed and checked (:func:`check_manifest`)."""
    paths = sorted(root.glob("manifest-r*.json"))
    if (root / MANIFEST).is_file():
        paths.insert(0, root / MANIFEST)
    found = []
    for p in paths:
        try:
            data = json.loads(p.read_text())
        except (OSError, ValueError) as err:
            raise UserError(f"manifest {str(p)!r} is unreadable ({err}); delete it and rerun the vdistill preprocess "
                            "command (its shards are then rewritten)") from err
        check_manifest(p, data)
        found.append((p, data))
    return found


def check_settings(root: Path, found: list[tuple[Path, dict]], settings: dict) -> None:
    """Refuse a folder whose manifests were written with other settings (another teacher, size, fps, captions
    file, ...), naming what differs, in one line."""
    shards.check_settings(root, found, settings, what="latents")


def union_entries(root: Path, found: list[tuple[Path, dict]]) -> dict[int, dict]:
    """Completed shards by index over all manifests (:func:`vdistill.data.shards.union_entries`, this format's
    corruption message)."""
    return shards.union_entries(root, found, corrupt=corrupt)


def build_manifest(settings: dict, entries: dict[int, dict], num_shards: int, dropped: list,
                   uncond: dict | None) -> dict:
    shards = [entries[i] for i in sorted(entries)]
    clips = sum(e["count"] for e in shards)
    skipped = sorted([*dropped, *(x for e in shards for x in e["skipped"])], key=lambda x: x[0])
    return {
        "format": FORMAT,
        "settings": settings,
        "num_shards": num_shards,
        "complete": len(shards) == num_shards and uncond is not None,
        "num_clips": clips,
        "num_skipped": len(skipped),
        "bytes_per_clip": round(sum(e["bytes"] for e in shards) / clips) if clips else None,
        "uncond": uncond,
        "dropped": dropped,
        "skipped": skipped,
        "shards": shards,
    }


def load_manifest(root: str | Path) -> dict:
    """The union of all manifests of ``root`` (:func:`build_manifest` form), each checked, their settings agreeing."""
    root = Path(root)
    found = read_manifests(root)
    if not found:
        raise UserError(f"{str(root)!r} holds no latent-cache manifest (manifest.json or manifest-r*.json); run "
                        "vdistill preprocess first")
    settings = found[0][1]["settings"]
    check_settings(root, found[1:], settings)
    uncond = next((d["uncond"] for _, d in found if d.get("uncond") is not None), None)
    return build_manifest(settings, union_entries(root, found), found[0][1]["num_shards"], found[0][1]["dropped"],
                          uncond)


def merge(root: str | Path) -> dict:
    """Union the per-rank manifests of ``root`` into ``manifest.json`` (atomically) and return it."""
    manifest = load_manifest(root)
    atomic_write_json(Path(root) / MANIFEST, manifest)
    return manifest


# -- shards -------------------------------------------------------------------------------------------------------
def _header(path: Path, f, keys: list[str]) -> dict[str, tuple[list[int], str]]:
    try:
        return {k: (list(f.get_slice(k).get_shape()), DTYPE_NAMES.get(f.get_slice(k).get_dtype(), "?")) for k in keys}
    except Exception as err:  # safetensors' own error types
        raise corrupt(path, f"unreadable tensors: {err}") from err


def check_text(path: Path, header: dict[str, tuple[list[int], str]], settings: dict, rows: int) -> None:
    """Each ``text.<key>`` of ``settings["text"]`` is there with ``rows`` rows, at most ``L`` positions, the rest of
    its shape and its dtype as recorded."""
    for key, spec in settings["text"].items():
        got = header.get(f"text.{key}")
        if got is None:
            raise corrupt(path, f"no tensor 'text.{key}'")
        shape, dtype = got
        full = spec["shape"]
        ok = len(shape) == len(full) + 1 and shape[0] == rows and (
            not full or (1 <= shape[1] <= full[0] and shape[2:] == full[1:]))
        if not ok or dtype != spec["dtype"]:
            raise corrupt(path, f"text.{key} is {dtype} {shape}, expected {spec['dtype']} [{rows}, <= {full}]")


def check_shard(path: Path, entry: dict, settings: dict, sha256: bool = False) -> None:
    """Check a shard against its manifest ``entry`` and the cache ``settings``: size, header, the shapes and dtypes
    of ``latents`` and ``text.*``, its positions; with ``sha256=True`` (reads the whole file) the hash."""
    if not path.is_file():
        raise ShardError(f"shard {str(path)!r} is listed in the manifest but missing; rerun the vdistill preprocess "
                         "command to rewrite it")
    if path.stat().st_size != entry["bytes"]:
        raise corrupt(path, f"{path.stat().st_size} bytes, the manifest says {entry['bytes']}")
    f = open_shard(path)
    n = entry["count"]
    header = _header(path, f, list(f.keys()))
    missing = {"latents", "index", "row"} - set(header)
    if missing:
        raise corrupt(path, f"no tensor {sorted(missing)}")
    want = ([n, *settings["latent_shape"]], settings["dtype"])
    if tuple(header["latents"]) != want:
        raise corrupt(path, f"latents are {header['latents'][1]} {header['latents'][0]}, expected {want[1]} {want[0]}")
    check_text(path, header, settings, n)
    try:
        index = f.get_tensor("index")
    except Exception as err:
        raise corrupt(path, f"unreadable index: {err}") from err
    lo, hi = entry["start"], entry["start"] + entry["rows"]
    if (index.shape != (n,) or n + len(entry["skipped"]) != entry["rows"]
            or (n and (index.min() < lo or index.max() >= hi or bool((index.diff() <= 0).any())))):
        raise corrupt(path, f"holds positions {index.tolist()[:8]}, expected {n} increasing positions in "
                      f"{lo}..{hi - 1}")
    if sha256 and file_sha256(path) != entry["sha256"]:
        raise corrupt(path, "sha256 differs from the manifest")


def read_uncond(root: Path, manifest: dict) -> dict[str, Tensor]:
    """The empty prompt's conditioning ``{key: [1, L, ...]}`` (zero tails padded back), hash-checked."""
    entry = manifest["uncond"]
    path = root / UNCOND
    if entry is None:
        raise UserError(f"{str(root)!r} has no {UNCOND} yet (rank 0 writes it first); rerun vdistill preprocess "
                        "with rank 0")
    if not path.is_file() or path.stat().st_size != entry["bytes"] or file_sha256(path) != entry["sha256"]:
        raise corrupt(path, "missing, or its size or sha256 differs from the manifest")
    f = open_shard(path)
    check_text(path, _header(path, f, list(f.keys())), manifest["settings"], 1)
    return {k: pad_tail(f.get_tensor(f"text.{k}"), s["shape"][0])
            for k, s in manifest["settings"]["text"].items()}
