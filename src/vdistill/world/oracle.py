"""Oracle metrics for toy videos, read from pixels alone: the object's colour, shape and motion, and a quality score.

The toy world draws one hard-edged palette-coloured object on black (see ``render.py``), so a few lines of image
processing recover what a caption says. The oracle is the toy stand-in for VBench-style semantic and quality scores:

- **colour**: the mean colour of object pixels, normalised by its brightest channel, nearest palette colour;
- **shape**: IoU of each frame's object mask with circle / square / triangle (apex up) templates placed at the
  mask's centroid and sized by its area (best of a few sizes), averaged over frames; the best shape wins;
- **motion**: least-squares velocity of the mask's centroid; the larger component picks the axis, its sign the
  direction (y grows downwards); slower than ``MIN_TRAVEL`` frame sizes over the clip counts as no motion;
- **quality** = cleanliness x steadiness: the fraction of pixels near black or near the predicted palette colour,
  times a score for how steady the object's area stays over frames. A product, so that noise (steady but dirty)
  and a flickering clean object both score low.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from vdistill.errors import UserError
from vdistill.world.captions import COLOURS, SHAPES, Caption

# A pixel belongs to the object when its brightest channel exceeds this (palette colours have a channel at 1).
OBJECT_THRESHOLD = 0.35
# A frame shows the object when the mask covers at least this fraction of it (the smallest toy object covers ~5%).
MIN_AREA_FRACTION = 0.01
# Below this total centroid travel (fraction of the frame size over the clip) the object is not moving;
# toy videos travel 1/3 to 1/2 of the frame.
MIN_TRAVEL = 0.1
# A pixel is clean when its L-inf distance to black or to the predicted palette colour is below this.
CLEAN_TOLERANCE = 0.25
# Area steadiness: full score up to this coefficient of variation (rasterised toy videos reach ~0.14) ...
CV_FULL = 0.2
# ... falling linearly to zero here.
CV_ZERO = 0.6
# Template sub-samples per pixel side: a template pixel is inside when >= half its sub-samples are (as in render.py).
_SS = 4
# Half-extent search around the area-based estimate (see _best_template_iou).
_R_SCALES = (0.9, 0.95, 1.0, 1.05, 1.1)
# Frames per chunk when rasterising templates (bounds the temporary [chunk, H*SS, W*SS] tensors).
_CHUNK = 1024

_PALETTE_NAMES = tuple(COLOURS)
_PALETTE = torch.tensor([COLOURS[c] for c in _PALETTE_NAMES], dtype=torch.float32)  # [4, 3]
_AREA_PER_R2 = {"circle": math.pi, "square": 4.0, "triangle": 2.0}  # area / half-extent^2
_MOTION_NAMES = {(0, 1): "right", (0, -1): "left", (1, 1): "down", (1, -1): "up"}  # (axis, sign) -> name


@dataclass(frozen=True)
class OracleReading:
    """What the oracle reads from one video. A ``None`` attribute means the object was missing (always wrong)."""

    colour: str | None
    shape: str | None
    motion: str | None
    quality: float
    cleanliness: float
    steadiness: float

    def correct(self, caption: Caption) -> dict[str, bool]:
        """Whether each attribute matches ``caption``: ``{"colour": ..., "shape": ..., "motion": ...}``."""
        return {
            "colour": self.colour == caption.colour,
            "shape": self.shape == caption.shape,
            "motion": self.motion == caption.motion,
        }


def oracle(video: Tensor) -> OracleReading:
    """Read one video ``[T, 3, H, W]`` in [0, 1]."""
    if video.ndim != 4:
        raise UserError(f"expected one video [T, 3, H, W], got shape {tuple(video.shape)}")
    return oracle_batch(video[None])[0]


def oracle_batch(videos: Tensor) -> list[OracleReading]:
    """Read a batch of videos ``[B, T, 3, H, W]`` in [0, 1]; one reading per video, vectorised over the batch."""
    if videos.ndim != 5 or videos.shape[2] != 3:
        raise UserError(f"expected videos [B, T, 3, H, W], got shape {tuple(videos.shape)}")
    x = videos.detach().to("cpu", torch.float32).clamp(0, 1)
    B, T, _, H, W = x.shape
    mask = x.amax(dim=2) > OBJECT_THRESHOLD  # [B, T, H, W]
    area = mask.sum(dim=(-2, -1)).float()  # [B, T]
    present = area >= MIN_AREA_FRACTION * H * W  # [B, T]
    # "Missing in most frames" -> no reading; at least half the frames must show the object.
    found = present.sum(dim=1) * 2 >= T  # [B]
    mask = mask & present[..., None, None]

    colour_idx = _colour(x, mask)  # [B]
    shape_iou = _shape_iou(mask, present)  # [B, 3]
    motion = _motion(mask, present, area, size=max(H, W))  # [B, 2] (axis, sign), sign 0 = no motion

    target = _PALETTE[colour_idx] * found[:, None]  # [B, 3]; black when no object
    cleanliness = _cleanliness(x, target)  # [B]
    steadiness = _steadiness(area)  # [B]
    quality = cleanliness * steadiness

    readings = []
    for b in range(B):
        ok = bool(found[b])
        axis, sign = int(motion[b, 0]), int(motion[b, 1])
        readings.append(
            OracleReading(
                colour=_PALETTE_NAMES[int(colour_idx[b])] if ok else None,
                shape=SHAPES[int(shape_iou[b].argmax())] if ok else None,
                motion=_MOTION_NAMES[(axis, sign)] if ok and sign != 0 else None,
                quality=float(quality[b]),
                cleanliness=float(cleanliness[b]),
                steadiness=float(steadiness[b]),
            )
        )
    return readings


def _colour(x: Tensor, mask: Tensor) -> Tensor:
    """Palette index ``[B]`` nearest the object's mean colour (x ``[B, T, 3, H, W]``, mask ``[B, T, H, W]``)."""
    m = mask[:, :, None].float()
    mean = (x * m).sum(dim=(1, 3, 4)) / m.sum(dim=(1, 3, 4)).clamp_min(1)  # [B, 3]
    # Divide by the brightest channel so a dim or soft-edged yellow still reads as yellow, not as red or green.
    chroma = mean / mean.amax(dim=-1, keepdim=True).clamp_min(1e-6)
    return torch.cdist(chroma, _PALETTE).argmin(dim=-1)


def _shape_iou(mask: Tensor, present: Tensor) -> Tensor:
    """Mean IoU ``[B, len(SHAPES)]`` over frames showing the object, of each frame's mask with its best template."""
    B, T, H, W = mask.shape
    flat = mask.reshape(B * T, H, W)
    idx = present.reshape(-1).nonzero().squeeze(1)
    iou = torch.zeros(B * T, len(SHAPES))
    for start in range(0, len(idx), _CHUNK):
        sel = idx[start : start + _CHUNK]
        iou[sel] = _best_template_iou(flat[sel])
    iou = iou.reshape(B, T, -1) * present[..., None]
    return iou.sum(dim=1) / present.sum(dim=1, keepdim=True).clamp_min(1)


def _best_template_iou(m: Tensor) -> Tensor:
    """Best IoU ``[n, len(SHAPES)]`` of masks ``m`` ``[n, H, W]`` (non-empty) with fitted templates of each shape.

    Templates are placed by the mask's centroid and sized by its area (circle pi r^2, square 4 r^2, triangle 2 r^2),
    then the half-extent is searched over ``_R_SCALES``: rasterisation loses or adds whole boundary pixels (a small
    square can lose all four corners), so the area alone misjudges r. A bounding-box fit fails on the smallest
    triangles, which rasterise to 4-5 px blobs.
    """
    n, H, W = m.shape
    mf = m.float()
    area = mf.sum(dim=(1, 2))
    mx = (mf.sum(dim=1) * (torch.arange(W) + 0.5)).sum(dim=-1) / area  # [n]
    my = (mf.sum(dim=2) * (torch.arange(H) + 0.5)).sum(dim=-1) / area
    scales = torch.tensor(_R_SCALES)
    best = []
    for shape in SHAPES:
        r = (area / _AREA_PER_R2[shape]).sqrt()[:, None] * scales  # [n, K]
        # A triangle's centroid lies r/3 below the centre of its box.
        cy = (my[:, None] - (r / 3 if shape == "triangle" else 0)).expand_as(r)
        templates = rasterise(shape, mx[:, None].expand_as(r), cy, r, H, W)  # [n, K, H, W]
        inter = (templates & m[:, None]).sum(dim=(-2, -1))
        union = (templates | m[:, None]).sum(dim=(-2, -1))
        best.append((inter / union.clamp_min(1)).amax(dim=1))
    return torch.stack(best, dim=1)


def rasterise(shape: str, cx: Tensor, cy: Tensor, r: Tensor, H: int, W: int) -> Tensor:
    """Boolean masks ``[*batch, H, W]`` of shapes of half-extent ``r`` centred at ``(cx, cy)`` (each ``[*batch]``).

    Pixel for pixel what ``render.shape_mask`` draws (a pixel is inside when >= half of its ``_SS x _SS``
    sub-samples are), computed row by row: every shape cuts a sub-sample row in one interval ``[a, b]``, so a
    pixel's count is an interval overlap rather than ``_SS^2`` point tests.
    """
    y = (torch.arange(H * _SS) + 0.5) / _SS - cy[..., None]  # [*batch, H*SS]
    r = r[..., None]
    inside_rows = y.abs() <= r
    if shape == "circle":
        half = (r**2 - y**2).clamp_min(0).sqrt()
    elif shape == "square":
        half = r.expand_as(y)
    elif shape == "triangle":
        half = (y + r) / 2  # apex up: width 0 at y = -r, 2r at the base y = +r
    else:
        raise ValueError(f"unknown shape {shape!r}")
    # Sub-sample columns m (at x = (m + 0.5) / SS) inside the row's interval: lo <= m <= hi.
    lo = torch.ceil((cx[..., None] - half) * _SS - 0.5)
    hi = torch.where(inside_rows, torch.floor((cx[..., None] + half) * _SS - 0.5), lo - 1)
    first = torch.arange(W) * _SS  # first sub-sample column of each pixel
    count = (torch.minimum(hi[..., None], first + _SS - 1) - torch.maximum(lo[..., None], first) + 1).clamp_min(0)
    count = count.reshape(*count.shape[:-2], H, _SS, W).sum(dim=-2)  # [*batch, H, W] sub-samples inside
    return count * 2 >= _SS * _SS


def _motion(mask: Tensor, present: Tensor, area: Tensor, size: int) -> Tensor:
    """Direction ``[B, 2]`` as (axis 0 = x / 1 = y, sign in {-1, 0, 1}) of the centroid's least-squares velocity."""
    B, T, H, W = mask.shape
    m = mask.float()
    a = area.clamp_min(1)
    cx = (m.sum(dim=2) * (torch.arange(W) + 0.5)).sum(dim=-1) / a  # [B, T]
    cy = (m.sum(dim=3) * (torch.arange(H) + 0.5)).sum(dim=-1) / a
    w = present.float()
    t = torch.arange(T, dtype=torch.float32)[None].expand(B, T)
    wsum = w.sum(dim=1, keepdim=True).clamp_min(1)
    dt = (t - (w * t).sum(dim=1, keepdim=True) / wsum) * w  # centred times, zero on frames without the object
    denom = (dt**2).sum(dim=1).clamp_min(1e-6)
    vel = torch.stack([(dt * cx).sum(dim=1), (dt * cy).sum(dim=1)], dim=1) / denom[:, None]  # [B, 2] px/frame
    axis = (vel[:, 1].abs() > vel[:, 0].abs()).long()
    along = vel.gather(1, axis[:, None]).squeeze(1)
    moving = along.abs() * max(T - 1, 1) >= MIN_TRAVEL * size
    sign = torch.sign(along).long() * moving
    return torch.stack([axis, sign], dim=1)


def _cleanliness(x: Tensor, target: Tensor) -> Tensor:
    """Fraction ``[B]`` of pixels within ``CLEAN_TOLERANCE`` (L-inf) of black or of ``target`` ``[B, 3]``."""
    near_black = x.amax(dim=2) < CLEAN_TOLERANCE
    near_colour = (x - target[:, None, :, None, None]).abs().amax(dim=2) < CLEAN_TOLERANCE
    return (near_black | near_colour).float().mean(dim=(1, 2, 3))


def _steadiness(area: Tensor) -> Tensor:
    """Score ``[B]`` in [0, 1] from the coefficient of variation of the object's area ``[B, T]`` (pixels)."""
    mean = area.mean(dim=1)
    cv = area.std(dim=1, unbiased=False) / mean.clamp_min(1e-6)
    score = ((CV_ZERO - cv) / (CV_ZERO - CV_FULL)).clamp(0, 1)
    return torch.where(mean > 0, score, torch.zeros_like(score))
