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
crash leaves the old file or the new one, never half of one.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from vdistill.errors import UserError

FORMAT = "vdistill-synvid/1"
MANIFEST = "manifest.json"
TMP = ".tmp"


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.safetensors"


def part_name(rank: int) -> str:
    return f"manifest-r{rank}.json"


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some platforms cannot open folders; the rename is still atomic there
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on ``<path>.<random>.tmp`` in the same folder, fsync it, and rename it over ``path``."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex[:8]}{TMP}")  # unique: ranks may merge at once
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # only left when ``write`` or the rename failed (Ctrl-C included)
    _fsync_dir(path.parent)


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
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))
    return {"sha256": file_sha256(path), "bytes": path.stat().st_size}


def corrupt(path: Path, why: str) -> UserError:
    return UserError(f"shard {str(path)!r} is corrupt ({why}); delete it and rerun the same synthesis command to "
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
        raise UserError(f"shard {str(path)!r} is listed in the manifest but missing; rerun the synthesis command "
                        "to regenerate it")
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
    text = json.dumps(value, default=str)
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
    if data.get("format") != FORMAT:
        raise UserError(f"{str(path)!r} is not a vdistill trajectory manifest (format {data.get('format')!r}, "
                        f"expected {FORMAT!r})")
    return data


def read_manifests(root: str | Path) -> list[tuple[Path, dict]]:
    """``manifest.json`` and every ``manifest-r*.json`` of ``root`` (temp files ignored), parsed."""
    root = Path(root)
    paths = sorted(root.glob("manifest-r*.json"))
    if (root / MANIFEST).is_file():
        paths.insert(0, root / MANIFEST)
    return [(p, _read_json(p)) for p in paths]


def check_settings(root: Path, found: list[tuple[Path, dict]], settings: dict) -> None:
    """Refuse a folder whose manifests were written with other settings, naming what differs."""
    for path, data in found:
        diff = settings_diff(data["settings"], settings)
        if diff:
            raise UserError(f"{str(root)!r} holds trajectories made by another teacher or with other settings "
                            f"({path.name}): " + "; ".join(diff) + ". Use another output folder, or delete this one.")


def union_entries(root: Path, found: list[tuple[Path, dict]]) -> dict[int, dict]:
    """Completed shards by index over all manifests. Two entries of one shard with different hashes (a shard
    regenerated by another rank after a change of world size) are resolved by hashing the file."""
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
    """The union of all manifests of ``root`` (:func:`build_manifest` form), checked for consistent settings."""
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


def verify(root: str | Path) -> dict:
    """Check every listed shard, hashes included (reads the whole dataset); returns the manifest."""
    manifest = load_manifest(root)
    for e in manifest["shards"]:
        check_shard(Path(root) / e["file"], e, manifest["settings"], sha256=True)
    return manifest
