"""AccVideo's synthetic trajectory dataset ("SynVid"): write the teacher's key points, read them lazily.

* :func:`synthesize`: prompts -> shards of key latents + text conditioning (resumable, split by rank),
* :class:`TrajectoryDataset` / :class:`TrajectoryData`: lazy memory-mapped reading, batching,
* :mod:`vdistill.synth.shards`: the file format (atomic writes, manifests, :func:`merge`, :func:`verify`).
"""

from __future__ import annotations

import importlib

from vdistill.synth.shards import load_manifest, merge, read_shard, verify, write_shard
from vdistill.synth.writer import ACCVIDEO_KEY_INDICES, synthesize

#: the datamodule side imports Lightning: loaded on first use, so `vdistill synth` (the writer) starts without it
_DATASET = ("TrajectoryData", "TrajectoryDataset", "check_teacher", "collate")


def __getattr__(name: str):
    if name in _DATASET:
        return getattr(importlib.import_module("vdistill.synth.dataset"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["ACCVIDEO_KEY_INDICES", "TrajectoryData", "TrajectoryDataset", "check_teacher", "collate",
           "load_manifest", "merge", "read_shard", "synthesize", "verify", "write_shard"]
