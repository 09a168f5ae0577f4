"""Encode once, train many times: real clips encoded by the teacher's VAE and text encoder, stored as shards
(read back by :mod:`vdistill.data.latent_clips`).

* :func:`preprocess` (``vdistill preprocess``): captions file + videos -> a latent cache (resumable, split by rank),
* :mod:`vdistill.data.latent_cache`: the file format (manifests, shard checks, lossless text trimming).
"""

from __future__ import annotations

from vdistill.data.latent_cache import load_manifest
from vdistill.preprocess.writer import preprocess

__all__ = ["load_manifest", "preprocess"]
