"""Differentiable image preprocessing for the critics: torchvision's ``transforms.v2.functional`` on tensors, so
rewards backpropagate to the pixels.

Each function takes frames ``[N, 3, H, W]`` in [0, 1] and mirrors one official PIL/torchvision pipeline; the tensor
``resize`` is bicubic with ``antialias=True`` (PIL antialiases too).
"""

from __future__ import annotations

from collections.abc import Sequence

import torchvision.transforms.v2.functional as TF
from torch import Tensor
from torchvision.transforms import InterpolationMode

from vdistill.errors import unknown_choice

# OpenAI CLIP (open_clip OPENAI_DATASET_MEAN/STD; the laion CLIP-ViT-H-14 processor uses the same values).
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# ImageNet: what T2V-Turbo fed ViCLIP and InternVideo2 (reward_fn.py, ViCLIP_NORMALIZE).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

NORMALIZATIONS = {"openai": (OPENAI_CLIP_MEAN, OPENAI_CLIP_STD), "imagenet": (IMAGENET_MEAN, IMAGENET_STD)}


def resize_longest_and_pad(frames: Tensor, size: int, mode: str = "bicubic") -> Tensor:
    """Longest side -> ``size`` (aspect kept), then zero-pad (black) to ``size x size``, image centred.

    HPSv2's validation transform (open_clip ``ResizeMaxSize`` / ``ResizeKeepRatio(longest=1)`` +
    ``CenterCropOrPad(fill=0)``): new sides are ``round(side * size / longest)``.
    """
    h, w = frames.shape[-2:]
    scale = size / max(h, w)
    # open_clip rounds the short side; torchvision's resize(max_size=size) would truncate it
    frames = TF.resize(frames, [min(size, round(h * scale)), min(size, round(w * scale))], InterpolationMode(mode),
                       antialias=True)
    # a centre crop larger than the image pads it with zeros first: open_clip's CenterCropOrPad(fill=0)
    return TF.center_crop(frames, [size, size])


def resize_shortest_and_center_crop(frames: Tensor, size: int, mode: str = "bicubic") -> Tensor:
    """Shortest side -> ``size`` (aspect kept), then centre crop ``size x size``.

    The CLIP processor / torchvision ``Resize(size)`` + ``CenterCrop(size)``: the long side is
    ``int(size * long / short)`` (torchvision truncates) and the crop offset ``round((side - size) / 2)``.
    """
    return TF.center_crop(TF.resize(frames, size, InterpolationMode(mode), antialias=True), [size, size])


def normalize(frames: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    return TF.normalize(frames, list(mean), list(std))


def resolve_normalization(value: str | tuple[Sequence[float], Sequence[float]]) -> tuple[tuple, tuple]:
    """``"openai"`` / ``"imagenet"`` or an explicit ``(mean, std)`` pair -> ``(mean, std)`` tuples."""
    if isinstance(value, str):
        if value not in NORMALIZATIONS:
            raise unknown_choice("normalization", value, NORMALIZATIONS)
        return NORMALIZATIONS[value]
    mean, std = value
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)
