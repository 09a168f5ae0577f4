"""Encode once, train many times: real clips encoded by the teacher's VAE and text encoder, stored as shards.

* :func:`preprocess` (``vdistill preprocess``): captions file + videos -> a latent cache (resumable, split by rank),
* :class:`LatentClips` / :class:`LatentClipDataset`: lazy memory-mapped reading, batches for consistency distillation,
* :mod:`vdistill.preprocess.cache`: the file format (manifests, shard checks, lossless text trimming).
"""

from __future__ import annotations

from vdistill.preprocess.cache import load_manifest
from vdistill.preprocess.dataset import LatentClipDataset, LatentClips
from vdistill.preprocess.writer import preprocess

__all__ = ["LatentClipDataset", "LatentClips", "load_manifest", "preprocess"]
