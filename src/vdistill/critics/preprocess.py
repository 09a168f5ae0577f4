"""Differentiable image preprocessing for the critics (torch only, so rewards backpropagate to the pixels).

Each function takes frames ``[N, 3, H, W]`` in [0, 1] and mirrors one official PIL/torchvision pipeline with
``F.interpolate(..., antialias=True)``, the kernel torchvision's tensor ``resize`` uses (PIL antialiases too).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from vdistill.errors import unknown_choice

# OpenAI CLIP (open_clip OPENAI_DATASET_MEAN/STD; the laion CLIP-ViT-H-14 processor uses the same values).
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# ImageNet: what T2V-Turbo fed ViCLIP and InternVideo2 (reward_fn.py, ViCLIP_NORMALIZE).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

NORMALIZATIONS = {"openai": (OPENAI_CLIP_MEAN, OPENAI_CLIP_STD), "imagenet": (IMAGENET_MEAN, IMAGENET_STD)}


def _resize(frames: Tensor, size: tuple[int, int], mode: str) -> Tensor:
    if tuple(frames.shape[-2:]) == size:
        return frames
    return F.interpolate(frames, size=size, mode=mode, align_corners=False, antialias=True)


def resize_longest_and_pad(frames: Tensor, size: int, mode: str = "bicubic") -> Tensor:
    """Longest side -> ``size`` (aspect kept), then zero-pad (black) to ``size x size``, image centred.

    HPSv2's validation transform (open_clip ``ResizeMaxSize`` / ``ResizeKeepRatio(longest=1)`` +
    ``CenterCropOrPad(fill=0)``): new sides are ``round(side * size / longest)``.
    """
    h, w = frames.shape[-2:]
    scale = size / max(h, w)
    nh, nw = min(size, round(h * scale)), min(size, round(w * scale))
    frames = _resize(frames, (nh, nw), mode)
    top, left = (size - nh) // 2, (size - nw) // 2
    return F.pad(frames, (left, size - nw - left, top, size - nh - top), value=0.0)


def resize_shortest_and_center_crop(frames: Tensor, size: int, mode: str = "bicubic") -> Tensor:
    """Shortest side -> ``size`` (aspect kept), then centre crop ``size x size``.

    The CLIP processor / torchvision ``Resize(size)`` + ``CenterCrop(size)``: the long side is
    ``int(size * long / short)`` (torchvision truncates) and the crop offset ``round((side - size) / 2)``.
    """
    h, w = frames.shape[-2:]
    if h <= w:
        nh, nw = size, max(size, int(size * w / h))
    else:
        nh, nw = max(size, int(size * h / w)), size
    frames = _resize(frames, (nh, nw), mode)
    top, left = int(round((nh - size) / 2.0)), int(round((nw - size) / 2.0))
    return frames[..., top:top + size, left:left + size]


def normalize(frames: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    mean_t = torch.as_tensor(mean, dtype=frames.dtype, device=frames.device).view(-1, 1, 1)
    std_t = torch.as_tensor(std, dtype=frames.dtype, device=frames.device).view(-1, 1, 1)
    return (frames - mean_t) / std_t


def resolve_normalization(value: str | tuple[Sequence[float], Sequence[float]]) -> tuple[tuple, tuple]:
    """``"openai"`` / ``"imagenet"`` or an explicit ``(mean, std)`` pair -> ``(mean, std)`` tuples."""
    if isinstance(value, str):
        if value not in NORMALIZATIONS:
            raise unknown_choice("normalization", value, NORMALIZATIONS)
        return NORMALIZATIONS[value]
    mean, std = value
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)
