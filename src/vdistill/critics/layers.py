"""Small pieces the video critics share."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def resample_temporal(pos: Tensor, frames: int) -> Tensor:
    """Linearly resample a per-frame embedding ``[T0, *, C]`` to ``[frames, *, C]``.

    The official InternVideo2 / ViCLIP loaders stretch their temporal position embeddings this way
    (``F.interpolate(..., mode="linear")``, align_corners False) when run on more frames than trained on.
    """
    if pos.shape[0] == frames:
        return pos
    t0, rest = pos.shape[0], pos.shape[1:]
    x = pos.reshape(t0, -1).transpose(0, 1).unsqueeze(0)  # [1, *C, T0]
    x = F.interpolate(x, size=frames, mode="linear", align_corners=False)
    return x.squeeze(0).transpose(0, 1).reshape(frames, *rest)
