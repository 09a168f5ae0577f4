"""AccVideo's synthetic trajectory dataset ("SynVid"): write the teacher's key points (read back by
:mod:`vdistill.data.trajectories`).

* :func:`synthesize`: prompts -> shards of key latents + text conditioning (resumable, split by rank),
* :mod:`vdistill.data.shards`: the file format (atomic writes, manifests, :func:`merge`, :func:`verify`).
"""

from __future__ import annotations

from vdistill.data.shards import load_manifest, merge, read_shard, verify, write_shard
from vdistill.synth.writer import ACCVIDEO_KEY_INDICES, synthesize

__all__ = ["ACCVIDEO_KEY_INDICES", "load_manifest", "merge", "read_shard", "synthesize", "verify", "write_shard"]
