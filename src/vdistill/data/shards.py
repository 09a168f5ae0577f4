"""Files of a synthetic trajectory dataset: atomic writes, shards, manifests and their checks.

A dataset folder holds

* ``shard-{s:05d}.safetensors``: samples ``[s * shard_size, (s + 1) * shard_size)`` of the prompt list (named by
  the global shard index, not by the rank that wrote it), with the tensors

  - ``latents`` ``[n, K, C, T, H, W]``: the K key points of each trajectory (index 0 = the noise),
  - ``text.<key>`` ``[n, ...]``: each tensor of the teacher's text conditioning,
  - ``seeds`` int64 ``[n]`` (noise seed) and ``index`` int64 ``[n]`` (position in the prompt list),

  and the metadata ``{"prompts": <JSON list of the shard's prompts>}`` (one key: safetensors writes metadata
  keys in hash order, so only a single key keeps the file bytes a deterministic function of its content);
* ``manifest-r{rank}.json``: what rank ``rank`` wrote (settings + one entry per completed shard);
* ``manifest.json``: the union of the parts (:func:`merge`); readers union all of them anyway, so a stale
  ``manifest.json`` never hides a shard.

Every file is written to ``<name>.<random>.tmp`` in the same folder, fsynced, then renamed over ``<name>``: a
crash leaves the old file or the new one, never half of one; a write that fails (a full disk: ENOSPC) is a
:class:`~vdistill.errors.UserError` naming the file, and the files written before it stay as they were.

Manifests are untrusted input (a folder may come from elsewhere). Before anything is used, :func:`load_manifest`
checks the type of every field a reader needs (``settings``: ``key_indices``, ``key_timesteps``, ``latent_shape``,
``video_size``, ``dtype``, ``seed``, ``num_prompts``, ``shard_size``, ``schedule``; ``num_shards``; each shard
entry's ``index``, ``start``, ``count``, ``bytes``, ``sha256``, ``file``) and that an entry's ``file`` is exactly
``shard_name(index)``: no other path (``../x``, a sub-folder, an absolute path) is ever opened. A shard's bytes
are checked by :func:`check_shard`: size, header, shapes, sample indices and seeds always, and with ``sha256=True``
the hash of the whole file (readers do this once per shard and process, :mod:`vdistill.data.trajectories`).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from vdistill.errors import UserError
from vdistill.files import atomic_write

FORMAT = "vdistill-synvid/1"
MANIFEST = "manifest.json"
TMP = ".tmp"


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.safetensors"


def part_name(rank: int) -> str:
    return f"manifest-r{rank}.json"


def atomic_write_json(path: str | Path, obj: object) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=1) + "\n"))


def file_sha256(path: str | Path, chunk: int = 1 << 24) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def write_shard(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> dict:
    """Write ``tensors`` (stored exactly, dtype included) atomically; returns ``{"sha256", "bytes"}``.

    The bytes are a deterministic function of ``tensors`` and ``metadata`` only when ``metadata`` has at most
    one key (safetensors writes metadata keys in hash order).
    """
    path = Path(path)
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}

    def save(tmp: Path) -> None:
        try:
            save_file(tensors, str(tmp), metadata=metadata)
        except SafetensorError as err:  # its I/O errors (ENOSPC included) are not OSErrors and name no file
            raise UserError(f"cannot write {str(path)!r}: {err}") from err

    atomic_write(path, save)
    return {"sha256": file_sha256(path), "bytes": path.stat().st_size}


class ShardError(UserError):
    """A missing or corrupt shard, in one line even when a DataLoader worker raised it.

    torch re-raises a worker's exception in the main process as ``type(err)(text)`` where ``text`` is "Caught
    ShardError in DataLoader worker ..." followed by the worker's traceback; this class keeps only the original
    message (the traceback's last line), so the CLI still prints one line.
    """

    def __init__(self, message: str) -> None:
        if message.startswith(f"Caught {type(self).__name__} in DataLoader worker"):
            message = message.rstrip().splitlines()[-1].split(": ", 1)[-1]
        super().__init__(message)


def corrupt(path: Path, why: str) -> ShardError:
    return ShardError(f"shard {str(path)!r} is corrupt ({why}); delete it and rerun the same synthesis command to "
                      "regenerate it")


def read_shard(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """All tensors and the metadata of a shard (loads the whole file; readers use :func:`open_shard`)."""
    f = open_shard(path)
    return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})


def open_shard(path: str | Path):
    """``safe_open`` handle (memory-mapped, nothing read yet) or a :class:`UserError` naming the file."""
    path = Path(path)
    try:
        return safe_open(str(path), framework="pt")
    except Exception as err:  # safetensors raises its own error types for bad headers and short files
        raise corrupt(path, f"unreadable safetensors: {err}") from err


def check_shard(path: str | Path, entry: dict, settings: dict, sha256: bool = False) -> None:
    """Check a shard against its manifest ``entry`` and the dataset ``settings``: size, header, the shape and
    dtype of ``latents``, the sample indices and seeds, and (``sha256=True``, reads the whole file) the hash."""
    path = Path(path)
    if not path.is_file():
        raise ShardError(f"shard {str(path)!r} is listed in the manifest but missing; rerun the synthesis "
                         "command to regenerate it")
    size = path.stat().st_size
    if size != entry["bytes"]:
        raise corrupt(path, f"{size} bytes, the manifest says {entry['bytes']}")
    f = open_shard(path)
    n = entry["count"]
    want = [n, len(settings["key_indices"]), *settings["latent_shape"]]
    try:
        keys = set(f.keys())
        missing = {"latents", "seeds", "index"} - keys
        if missing:
            raise corrupt(path, f"no tensor {sorted(missing)}")
        latents = f.get_slice("latents")
        shape, dtype = list(latents.get_shape()), latents.get_dtype()
        index, seeds = f.get_tensor("index"), f.get_tensor("seeds")
    except UserError:
        raise
    except Exception as err:
        raise corrupt(path, f"unreadable tensors: {err}") from err
    if shape != want:
        raise corrupt(path, f"latents have shape {shape}, expected {want}")
    if _DTYPE_NAMES.get(dtype) != settings["dtype"]:
        raise corrupt(path, f"latents are {dtype}, expected {settings['dtype']}")
    expect = torch.arange(entry["start"], entry["start"] + n)
    if not torch.equal(index, expect) or not torch.equal(seeds, expect + settings["seed"]):
        raise corrupt(path, f"holds samples {index.tolist()} with seeds {seeds.tolist()}, expected samples "
                      f"{entry['start']}..{entry['start'] + n - 1}")
    bad_text = [k for k in keys if k.startswith("text.") and f.get_slice(k).get_shape()[0] != n]
    if bad_text:
        raise corrupt(path, f"text tensors {bad_text} do not have {n} rows")
    if sha256 and file_sha256(path) != entry["sha256"]:
        raise corrupt(path, "sha256 differs from the manifest")


_DTYPE_NAMES = {"BF16": "bfloat16", "F16": "float16", "F32": "float32"}


# -- manifests ------------------------------------------------------------------------------------------------
def settings_diff(old: dict, new: dict, prefix: str = "") -> list[str]:
    """``["key: old != new", ...]`` for every leaf that differs between two settings dicts."""
    out = []
    for k in sorted(set(old) | set(new), key=str):
        a, b = old.get(k, "<absent>"), new.get(k, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            out += settings_diff(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: {_short(a)} (folder) != {_short(b)} (now)")
    return out


def _short(value: object, limit: int = 80) -> str:
    return _clip(json.dumps(value, default=str), limit)


def _clip(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def jsonable(obj: object) -> object:
    """``obj`` as it reads back from JSON (tuples -> lists, unknown objects -> str), for exact comparisons."""
    return json.loads(json.dumps(obj, default=str))


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"manifest {str(path)!r} is unreadable ({err}); delete it and rerun the synthesis "
                        "command (its shards are then regenerated)") from err
    form = data.get("format") if isinstance(data, dict) else None
    if form != FORMAT:
        raise UserError(f"{str(path)!r} is not a vdistill trajectory manifest (format {_clip(repr(form))}, "
                        f"expected {FORMAT!r})")
    check_manifest(path, data)
    return data


# -- manifest schema: the type of every field a reader uses, checked before it is used ---------------------------
_ABSENT = object()


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)  # JSON true is not a count


def _natural(v: object) -> bool:
    return _is_int(v) and v >= 0


def _positive(v: object) -> bool:
    return _is_int(v) and v > 0


def _number(v: object) -> bool:
    return (_is_int(v) or isinstance(v, float)) and math.isfinite(v)


def _list_of(ok: Callable[[object], bool], length: int | None = None) -> Callable[[object], bool]:
    """A non-empty list (of ``length`` items when given) whose items pass ``ok``."""
    return lambda v: (isinstance(v, list) and len(v) > 0 and length in (None, len(v)) and all(ok(x) for x in v))


NATURAL = (_natural, "a non-negative integer")
SETTINGS_FIELDS = {
    "key_indices": (_list_of(_natural), "a list of non-negative integers"),
    "key_timesteps": (_list_of(_number), "a list of numbers"),
    "latent_shape": (_list_of(_positive), "a list of positive integers"),
    "video_size": (_list_of(_positive, 3), "3 positive integers [frames, height, width]"),
    "dtype": (lambda v: v in ("bfloat16", "float16", "float32"), "one of 'bfloat16', 'float16', 'float32'"),
    "seed": (_is_int, "an integer"),
    "num_prompts": NATURAL,
    "shard_size": (_positive, "a positive integer"),
    "schedule": (lambda v: isinstance(v, dict), "an object"),
}
ENTRY_FIELDS = {
    "index": NATURAL, "start": NATURAL, "count": NATURAL, "bytes": NATURAL,
    "sha256": (lambda v: isinstance(v, str) and re.fullmatch(r"[0-9a-f]{64}", v) is not None,
               "64 hexadecimal digits"),
    "file": (lambda v: isinstance(v, str), "a string"),
}


def _check_fields(path: Path, obj: object, fields: dict, where: str) -> None:
    if not isinstance(obj, dict):
        raise _bad_field(path, where, obj, "an object")
    for key, (ok, expected) in fields.items():
        if not ok(obj.get(key)):
            raise _bad_field(path, f"{where}.{key}", obj.get(key, _ABSENT), expected)


def _bad_field(path: Path, where: str, value: object, expected: str) -> UserError:
    shown = "absent" if value is _ABSENT else _clip(repr(value), 200)
    return UserError(f"manifest {str(path)!r}: {where} is {shown}, expected {expected}; delete the manifest and "
                     "rerun the synthesis command")


def check_manifest(path: Path, data: dict) -> None:
    """Refuse a manifest whose fields have the wrong type, or whose shard entries name another file than
    ``shard_name(index)`` (so a manifest never makes a reader open a path outside its folder)."""
    _check_fields(path, data.get("settings"), SETTINGS_FIELDS, "settings")
    settings = data["settings"]
    if len(settings["key_timesteps"]) != len(settings["key_indices"]):
        raise _bad_field(path, "settings.key_timesteps", settings["key_timesteps"],
                         f"{len(settings['key_indices'])} numbers (one per key index)")
    num_shards = data.get("num_shards", _ABSENT)
    if not _natural(num_shards):
        raise _bad_field(path, "num_shards", num_shards, NATURAL[1])
    if not isinstance(data.get("shards"), list):
        raise _bad_field(path, "shards", data.get("shards", _ABSENT), "a list")
    for i, entry in enumerate(data["shards"]):
        _check_fields(path, entry, ENTRY_FIELDS, f"shards[{i}]")
        if entry["index"] >= num_shards:
            raise _bad_field(path, f"shards[{i}].index", entry["index"], f"below num_shards ({num_shards})")
        if entry["file"] != shard_name(entry["index"]):
            raise UserError(f"manifest {str(path)!r}: shards[{i}].file is {_clip(repr(entry['file']), 200)}, expected "
                            f"{shard_name(entry['index'])!r}: a manifest may only name the shard files of its own "
                            "folder; delete it and rerun the synthesis command")


def read_manifests(root: str | Path) -> list[tuple[Path, dict]]:
    """``manifest.json`` and every ``manifest-r*.json`` of ``root`` (temp files ignored), parsed and checked
    (:func:`check_manifest`)."""
    root = Path(root)
    paths = sorted(root.glob("manifest-r*.json"))
    if (root / MANIFEST).is_file():
        paths.insert(0, root / MANIFEST)
    return [(p, _read_json(p)) for p in paths]


def check_settings(root: Path, found: list[tuple[Path, dict]], settings: dict, what: str = "trajectories") -> None:
    """Refuse a folder whose manifests were written with other settings, naming what differs (``what`` the folder
    holds: ``trajectories`` here, ``latents`` for the preprocess cache)."""
    for path, data in found:
        diff = settings_diff(data["settings"], settings)
        if diff:
            raise UserError(f"{str(root)!r} holds {what} made by another teacher or with other settings "
                            f"({path.name}): " + "; ".join(diff) + ". Use another output folder, or delete this one.")


def union_entries(root: Path, found: list[tuple[Path, dict]],
                  corrupt: Callable[[Path, str], UserError] = corrupt) -> dict[int, dict]:
    """Completed shards by index over all manifests. Two entries of one shard with different hashes (a shard
    regenerated by another rank after a change of world size) are resolved by hashing the file; ``corrupt`` makes
    the error of a file matching none (its format's wording)."""
    entries: dict[int, dict] = {}
    for _, data in found:
        for e in data["shards"]:
            old = entries.get(e["index"])
            if old is not None and old["sha256"] != e["sha256"]:
                actual = file_sha256(root / e["file"]) if (root / e["file"]).is_file() else None
                if actual not in (old["sha256"], e["sha256"]):
                    raise corrupt(root / e["file"], "its sha256 matches none of the manifests")
                e = old if actual == old["sha256"] else e
            entries[e["index"]] = e
    return entries


def build_manifest(settings: dict, entries: dict[int, dict], num_shards: int) -> dict:
    shards = [entries[i] for i in sorted(entries)]
    samples = sum(e["count"] for e in shards)
    return {
        "format": FORMAT,
        "settings": settings,
        "num_shards": num_shards,
        "complete": len(shards) == num_shards,
        "num_samples": samples,
        "bytes_per_sample": round(sum(e["bytes"] for e in shards) / samples) if samples else None,
        "shards": shards,
    }


def load_manifest(root: str | Path) -> dict:
    """The union of all manifests of ``root`` (:func:`build_manifest` form): each one's fields checked
    (:func:`check_manifest`), their settings checked to agree."""
    root = Path(root)
    found = read_manifests(root)
    if not found:
        raise UserError(f"{str(root)!r} holds no trajectory manifest (manifest.json or manifest-r*.json); "
                        "run the synthesis first")
    settings = found[0][1]["settings"]
    check_settings(root, found[1:], settings)
    return build_manifest(settings, union_entries(root, found), found[0][1]["num_shards"])


def merge(root: str | Path) -> dict:
    """Union the per-rank manifests of ``root`` into ``manifest.json`` (atomically) and return it."""
    manifest = load_manifest(root)
    atomic_write_json(Path(root) / MANIFEST, manifest)
    return manifest


def verify(root: str | Path, progress: Callable[[int], None] | None = None) -> dict:
    """Check every listed shard, hashes included, and that every float tensor is finite (reads the whole dataset
    twice, the second time from the page cache); returns the manifest. ``progress(n)``: called after each shard
    with its sample count."""
    manifest = load_manifest(root)
    for e in manifest["shards"]:
        path = Path(root) / e["file"]
        check_shard(path, e, manifest["settings"], sha256=True)
        f = open_shard(path)
        for key in f.keys():
            x = f.get_tensor(key)
            if x.is_floating_point() and not torch.isfinite(x).all():
                rows = (~torch.isfinite(x.flatten(1))).any(1).nonzero().flatten().tolist()
                raise corrupt(path, f"non-finite {key} in samples {[e['start'] + r for r in rows[:5]]}")
        if progress is not None:
            progress(e["count"])
    return manifest
