"""Oracle metrics for toy videos, read from pixels alone: the object's colour, shape and motion, and a quality score.

The toy world draws one hard-edged palette-coloured object on black (see ``render.py``), so a little image
processing recovers what a caption says. The oracle is the toy stand-in for VBench-style semantic and quality scores:

- **colour**: the mean colour of object pixels, divided by its brightest channel, nearest palette colour;
- **shape**: per frame, the best IoU of the object mask with a circle / square / triangle (apex up) template drawn
  as ``render.shape_mask`` draws it, anchored at the mask's centroid, over every size; averaged over frames, the
  best shape wins (ties: see ``_shape``);
- **motion**: least-squares velocity of the mask's centroid; the larger component picks the axis, its sign the
  direction (y grows downwards); less than ``MIN_TRAVEL`` frame sizes over the clip counts as no motion;
- **quality** = cleanliness x steadiness: the fraction of visible (not black) pixels that are near the predicted
  palette colour, times a score for how steady the object's area stays over frames. A product, so that noise
  (steady but dirty) and a flickering clean object both score low; an empty video has steadiness 0;
- **geometry** (what the renderer jitters per seed, for ToyBench's diversity): the object's start position
  ``(x0, y0)`` and its size, in fractions of the frame (``geometry_batch``), read so that a blurred, faint or
  noisy object reads as the sharp one. Per frame, the contrast is the brightest channel above the frame's median
  (the black background: an object covers at most ~20% of a frame) and the peak its maximum. The size is the root
  of the area at half maximum, where a symmetric blur crosses an edge's step and which a faint object scales with,
  counted softly (a pixel counts ``clamp(2 c / peak - 1/2, 0, 1)``: 0 below a quarter of the peak, 1 above three
  quarters) so that a blurred edge's pixels count by how far the edge reaches into them. The position is the
  contrast-weighted centroid of the pixels above a quarter of the peak (a symmetric blur keeps a centroid; the
  cut keeps background noise out), fitted over the frames by a least-squares line (the toy motion is uniform) and
  read at the first frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
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
# A pixel is black, or of the predicted palette colour, when its L-inf distance to it is below this.
CLEAN_TOLERANCE = 0.25
# Area steadiness: full score up to this coefficient of variation (rasterised toy videos reach ~0.14) ...
CV_FULL = 0.2
# ... falling linearly to zero here.
CV_ZERO = 0.6

# Geometry: a frame shows the object when its peak contrast over the background (brightest channel) reaches this.
MIN_CONTRAST = 0.1

# Sub-samples per pixel side, as in render.py: a template pixel is drawn when >= half of its sub-samples are inside.
_SS = 4
# Frames per chunk in the shape fit (bounds the [chunk, H * W, SS^2] threshold array: 16 MB at 16 x 16).
_CHUNK = 1024

_PALETTE_NAMES = tuple(COLOURS)
_PALETTE = torch.tensor([COLOURS[c] for c in _PALETTE_NAMES], dtype=torch.float32)  # [4, 3]
_MOTION_NAMES = {(0, 1): "right", (0, -1): "left", (1, 1): "down", (1, -1): "up"}  # (axis, sign) -> name


@dataclass(frozen=True)
class OracleReading:
    """What the oracle reads from one video. A ``None`` attribute means the object was missing (always wrong).

    ``x0``, ``y0``, ``size``: the object's start position and size in fractions of the frame (``geometry_batch``);
    ``None`` when fewer than half the frames show an object, even a faint one.
    """

    colour: str | None
    shape: str | None
    motion: str | None
    quality: float
    cleanliness: float
    steadiness: float
    x0: float | None = None
    y0: float | None = None
    size: float | None = None

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
    # "Missing in most frames" -> no reading: at least half the frames must show the object.
    found = present.sum(dim=1) * 2 >= T  # [B]
    mask = mask & present[..., None, None]

    colour_idx = _colour(x, mask)  # [B]
    shape_idx = _shape(mask.numpy(), present.numpy())  # [B]
    axis, sign = _motion(mask, present, area, size=max(H, W))  # [B] each; sign 0 = not moving

    target = _PALETTE[colour_idx] * found[:, None]  # [B, 3]; black when there is no object
    cleanliness = _cleanliness(x, target)
    steadiness = _steadiness(area)
    quality = cleanliness * steadiness
    geometry = geometry_batch(x)  # [B, 3]

    readings = []
    for b in range(B):
        ok = bool(found[b])
        moving = ok and int(sign[b]) != 0
        x0, y0, size = (None if v != v else float(v) for v in geometry[b].tolist())  # NaN -> None
        readings.append(
            OracleReading(
                colour=_PALETTE_NAMES[int(colour_idx[b])] if ok else None,
                shape=SHAPES[int(shape_idx[b])] if ok else None,
                motion=_MOTION_NAMES[(int(axis[b]), int(sign[b]))] if moving else None,
                quality=float(quality[b]),
                cleanliness=float(cleanliness[b]),
                steadiness=float(steadiness[b]),
                x0=x0,
                y0=y0,
                size=size,
            )
        )
    return readings


def geometry_batch(videos: Tensor) -> Tensor:
    """Start position and size ``[B, 3]`` = ``(x0, y0, size)`` in fractions of the frame, from videos
    ``[B, T, 3, H, W]`` in [0, 1] (module docstring); NaN rows where fewer than half the frames show an object.
    ``(x0, y0)`` locates the object's centroid (a triangle's lies r/3 below its box's centre); ``size`` is
    ``sqrt(area / (H * W))`` of the soft area at half maximum, averaged over the frames that show the object."""
    x = videos.detach().to("cpu", torch.float32).clamp(0, 1)
    B, T, _, H, W = x.shape
    b = x.amax(dim=2)  # [B, T, H, W]
    contrast = (b - b.flatten(2).median(dim=-1).values[..., None, None]).clamp_min(0)
    peak = contrast.amax(dim=(-2, -1), keepdim=True)  # [B, T, 1, 1]
    level = contrast / peak.clamp_min(1e-6)  # the peak reads 1
    weight = contrast * ((level >= 0.25) & (peak >= MIN_CONTRAST))
    present = (weight > 0).sum(dim=(-2, -1)) >= MIN_AREA_FRACTION * H * W  # [B, T]
    mass = weight.sum(dim=(-2, -1)).clamp_min(1e-12)
    cx = (weight.sum(dim=2) * (torch.arange(W) + 0.5)).sum(dim=-1) / mass / W  # [B, T]
    cy = (weight.sum(dim=3) * (torch.arange(H) + 0.5)).sum(dim=-1) / mass / H
    size = ((2 * level - 0.5).clamp(0, 1).sum(dim=(-2, -1)) / (H * W)).sqrt()
    w = present.float()
    count = w.sum(dim=1).clamp_min(1)
    t = torch.arange(T, dtype=torch.float32).expand(B, T)
    t_mean = (w * t).sum(dim=1) / count
    dt = (t - t_mean[:, None]) * w
    denom = (dt**2).sum(dim=1).clamp_min(1e-6)
    start = []
    for c in (cx, cy):  # least-squares line c(t) = mean + v (t - t_mean), read at t = 0
        mean = (w * c).sum(dim=1) / count
        start.append(mean - (dt * c).sum(dim=1) / denom * t_mean)
    out = torch.stack([*start, (w * size).sum(dim=1) / count], dim=1)
    found = present.sum(dim=1) * 2 >= T
    return torch.where(found[:, None], out, torch.full_like(out, float("nan")))


def _colour(x: Tensor, mask: Tensor) -> Tensor:
    """Palette index ``[B]`` nearest the object's mean colour (x ``[B, T, 3, H, W]``, mask ``[B, T, H, W]``)."""
    m = mask[:, :, None].float()
    mean = (x * m).sum(dim=(1, 3, 4)) / m.sum(dim=(1, 3, 4)).clamp_min(1)  # [B, 3]
    # Divide by the brightest channel so a dim or soft-edged yellow still reads as yellow, not as red or green.
    chroma = mean / mean.amax(dim=-1, keepdim=True).clamp_min(1e-6)
    return torch.cdist(chroma, _PALETTE).argmin(dim=-1)


def _shape(mask: np.ndarray, present: np.ndarray) -> np.ndarray:
    """Index into ``SHAPES`` ``[B]`` of the best-fitting shape (mask ``[B, T, H, W]``, present ``[B, T]`` bool).

    At 16 px a rasterised square can lose its corners and match a circle pixel for pixel: ~1.5% of toy videos
    tie at IoU 1 in every frame. Ties go to the shape that fits over the wider range of sizes (log-width of the
    best interval of r), an Occam factor: the mimic needs a finely tuned size, the true shape does not. That
    leaves ~0.1% wrong (seeds 0-39: 2 of 1,920: seed 22's yellow circle moving up, seed 30's red square moving right).
    """
    B, T, H, W = mask.shape
    flat, keep = mask.reshape(B * T, H * W), present.reshape(-1)
    idx = np.flatnonzero(keep)
    iou = np.zeros((B * T, len(SHAPES)), np.float32)
    width = np.zeros_like(iou)
    for start in range(0, len(idx), _CHUNK):
        sel = idx[start : start + _CHUNK]
        iou[sel], width[sel] = _fit_templates(flat[sel], H, W)
    weight = keep.reshape(B, T, 1).astype(np.float32)
    count = np.maximum(weight.sum(axis=1), 1)
    iou = (iou.reshape(B, T, -1) * weight).sum(axis=1) / count  # [B, S]
    width = (width.reshape(B, T, -1) * weight).sum(axis=1) / count
    tied = iou >= iou.max(axis=1, keepdims=True) - 1e-6
    return np.where(tied, width, -np.inf).argmax(axis=1)


def _fit_templates(m: np.ndarray, H: int, W: int) -> tuple[np.ndarray, np.ndarray]:
    """Best IoU ``[n, S]`` over sizes, and the log-width of the size interval attaining it, for masks ``[n, H*W]``.

    Templates of one shape anchored at one point are nested in the half-extent r, so each pixel has the size at
    which it is first drawn (``pixel_thresholds``). Sorting those sizes sweeps every distinct template at once:
    after the k smallest, the template has k pixels, of which a cumulative sum says how many are in the mask.
    """
    n = len(m)
    mf = m.reshape(n, H, W).astype(np.float32)
    area = mf.sum(axis=(1, 2))
    cx = (mf.sum(axis=1) * (np.arange(W, dtype=np.float32) + 0.5)).sum(axis=-1) / area  # [n] centroid
    cy = (mf.sum(axis=2) * (np.arange(H, dtype=np.float32) + 0.5)).sum(axis=-1) / area
    k = np.arange(1, H * W + 1, dtype=np.float32)
    ious, widths = [], []
    for shape in SHAPES:
        r = pixel_thresholds(shape, cx, cy, H, W)  # [n, H*W]
        order = np.argsort(r, axis=1)
        r = np.take_along_axis(r, order, axis=1)
        inter = np.cumsum(np.take_along_axis(m, order, axis=1), axis=1, dtype=np.float32)
        iou = inter / (area[:, None] + k - inter)
        # A template exists only once all pixels sharing a threshold are drawn; the last one stays for 2x its size.
        r_next = np.concatenate([r[:, 1:], 2 * r[:, -1:]], axis=1)
        iou = np.where(r_next > r, iou, 0.0)
        best = iou.argmax(axis=1)[:, None]
        ious.append(np.take_along_axis(iou, best, axis=1)[:, 0])
        lo, hi = np.take_along_axis(r, best, axis=1)[:, 0], np.take_along_axis(r_next, best, axis=1)[:, 0]
        widths.append(np.log(np.maximum(hi, 1e-6) / np.maximum(lo, 1e-6)))
    return np.stack(ious, axis=1), np.stack(widths, axis=1)


def pixel_thresholds(shape: str, cx: np.ndarray, cy: np.ndarray, H: int, W: int) -> np.ndarray:
    """Smallest half-extent r ``[n, H*W]`` at which each pixel is drawn, for templates anchored at ``(cx, cy)`` ``[n]``.

    The anchor is the centre for circles and squares and the centroid for triangles (r/3 below the centre of
    their box), so the pixels with threshold <= r are exactly ``render.shape_mask(shape, ...)`` with half-extent r.
    A pixel is drawn once half (8 of 16) of its sub-samples are inside, so its threshold is their 8th smallest.
    """
    n = len(cx)
    sub = (np.arange(_SS, dtype=np.float32) + 0.5) / _SS
    # Sub-sample offsets from the anchor, laid out [n, H, W, SS (y), SS (x)] so each pixel's are contiguous.
    dx = ((np.arange(W, dtype=np.float32)[:, None] + sub)[None] - cx[:, None, None]).reshape(n, 1, W, 1, _SS)
    dy = ((np.arange(H, dtype=np.float32)[:, None] + sub)[None] - cy[:, None, None]).reshape(n, H, 1, _SS, 1)
    if shape == "square":
        return _square_thresholds(np.abs(dx), np.abs(dy)).reshape(n, H * W)
    if shape == "circle":
        r = dx**2 + dy**2  # squared radius: same order, one square root per pixel at the end
    elif shape == "triangle":
        # With the centre at cy - r/3: inside iff -r <= dy + r/3 <= r and |dx| <= (dy + r/3 + r) / 2; solved for r.
        r = np.maximum(np.maximum(1.5 * dy, -0.75 * dy), 1.5 * np.abs(dx) - 0.75 * dy)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    half = _SS * _SS // 2
    r = r.reshape(n, H * W, _SS * _SS)
    r.partition(half - 1, axis=-1)  # in place: r is a fresh array
    r = r[..., half - 1]
    return np.sqrt(r) if shape == "circle" else r


def _square_thresholds(ax: np.ndarray, ay: np.ndarray) -> np.ndarray:
    """Per-pixel thresholds ``[n, H, W]`` of squares from |dx| ``[n, 1, W, 1, SS]`` and |dy| ``[n, H, 1, SS, 1]``.

    A square is separable: with r, (sub-columns inside) x (sub-rows inside) of a pixel's samples are inside, so
    the pixel is drawn once that product reaches 8 = 2 x 4 = 3 x 3 = 4 x 2 (for SS = 4).
    """
    assert _SS == 4, "the (2, 4), (3, 3), (4, 2) pairs below assume 4 x 4 sub-samples"
    a = np.sort(ax[:, :, :, 0, :], axis=-1)  # [n, 1, W, SS]: the r at which 1, 2, 3, 4 sub-columns are inside
    b = np.sort(ay[:, :, :, :, 0], axis=-1)  # [n, H, 1, SS]
    pairs = [np.maximum(a[..., i - 1], b[..., j - 1]) for i, j in ((2, 4), (3, 3), (4, 2))]
    return np.minimum(np.minimum(pairs[0], pairs[1]), pairs[2])


def _motion(mask: Tensor, present: Tensor, area: Tensor, size: int) -> tuple[Tensor, Tensor]:
    """Axis ``[B]`` (0 = x, 1 = y) and sign ``[B]`` in {-1, 0, 1} of the centroid's least-squares velocity."""
    B, T, H, W = mask.shape
    m = mask.float()
    a = area.clamp_min(1)
    cx = (m.sum(dim=2) * (torch.arange(W) + 0.5)).sum(dim=-1) / a  # [B, T]
    cy = (m.sum(dim=3) * (torch.arange(H) + 0.5)).sum(dim=-1) / a
    w = present.float()
    t = torch.arange(T, dtype=torch.float32).expand(B, T)
    t_mean = (w * t).sum(dim=1, keepdim=True) / w.sum(dim=1, keepdim=True).clamp_min(1)
    dt = (t - t_mean) * w  # centred times, zero on frames without the object
    denom = (dt**2).sum(dim=1).clamp_min(1e-6)
    vel = torch.stack([(dt * cx).sum(dim=1), (dt * cy).sum(dim=1)], dim=1) / denom[:, None]  # [B, 2] px / frame
    axis = (vel[:, 1].abs() > vel[:, 0].abs()).long()
    along = vel.gather(1, axis[:, None]).squeeze(1)
    moving = along.abs() * max(T - 1, 1) >= MIN_TRAVEL * size
    return axis, torch.sign(along).long() * moving


def _cleanliness(x: Tensor, target: Tensor) -> Tensor:
    """Fraction ``[B]`` of visible pixels (not within ``CLEAN_TOLERANCE`` of black) near ``target`` ``[B, 3]`` (L-inf).

    Counted over visible pixels, not the frame: the black background is most of a frame, and a frame-wide fraction
    barely notices a blur that smears the object (sigma = 2 px still scored 0.85).
    """
    visible = x.amax(dim=2) >= CLEAN_TOLERANCE  # [B, T, H, W]
    on_colour = (x - target[:, None, :, None, None]).abs().amax(dim=2) < CLEAN_TOLERANCE
    n_visible = visible.sum(dim=(1, 2, 3)).float()
    n_clean = (visible & on_colour).sum(dim=(1, 2, 3)).float()
    return torch.where(n_visible > 0, n_clean / n_visible.clamp_min(1), torch.ones_like(n_visible))


def _steadiness(area: Tensor) -> Tensor:
    """Score ``[B]`` in [0, 1] from the coefficient of variation of the object's area ``[B, T]`` (pixels)."""
    mean = area.mean(dim=1)
    cv = area.std(dim=1, unbiased=False) / mean.clamp_min(1e-6)
    score = ((CV_ZERO - cv) / (CV_ZERO - CV_FULL)).clamp(0, 1)
    return torch.where(mean > 0, score, torch.zeros_like(score))
