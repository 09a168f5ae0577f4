"""Encode once, train many times: real clips encoded by the teacher's VAE and text encoder, stored as shards.

* :func:`preprocess` (``vdistill preprocess``): captions file + videos -> a latent cache (resumable, split by rank),
* :class:`LatentClips` / :class:`LatentClipDataset`: lazy memory-mapped reading, batches for consistency distillation,
* :mod:`vdistill.preprocess.cache`: the file format (manifests, shard checks, lossless text trimming).
"""

from __future__ import annotations

import importlib

from vdistill.preprocess.cache import load_manifest
from vdistill.preprocess.writer import preprocess

#: the datamodule side imports Lightning: loaded on first use, so `vdistill preprocess` starts without it
_DATASET = ("LatentClipDataset", "LatentClips")


def __getattr__(name: str):
    if name in _DATASET:
        return getattr(importlib.import_module("vdistill.preprocess.dataset"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["LatentClipDataset", "LatentClips", "load_manifest", "preprocess"]
