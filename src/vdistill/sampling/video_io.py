"""Writing sampled videos: ``.npz`` arrays to evaluate later, and ``.mp4`` / GIF grids to look at.

Videos in memory are ``[N, T, 3, H, W]`` float in [0, 1]; on disk (npz) and in image files they are uint8
``[N, T, H, W, 3]``. Toy videos are 16 x 16, so everything written for eyes is upscaled nearest-neighbour.

Each writer writes the one file it is given; atomicity is the caller's (``vdistill sample`` writes into a temporary
folder, :func:`vdistill.files.atomic_folder`). A writer that fails raises an ``OSError`` that names its file, also
where the library gives none (numpy's zip writer and Pillow on a full disk) or raises nothing at all (ffmpeg, which
only prints its error: its exit status is checked here).
"""

from __future__ import annotations

import errno
import math
import os
import subprocess
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from vdistill.errors import UserError
from vdistill.files import naming

# libx264 with yuv420p wants even sizes and players prefer multiples of 16; padding (not resizing) keeps pixels square.
_MP4_BLOCK = 16
# Grey of the 1-px lines between GIF grid tiles (the toy world's background is black).
_GAP_GREY = 128


def to_uint8(videos: Tensor | np.ndarray) -> np.ndarray:
    """uint8 ``[..., T, H, W, 3]`` from float ``[..., T, 3, H, W]`` in [0, 1]; uint8 input is taken as is."""
    if isinstance(videos, np.ndarray) and videos.dtype == np.uint8:
        return videos
    x = torch.as_tensor(videos)
    if x.dtype == torch.uint8:
        return x.cpu().numpy()
    if x.ndim < 3 or x.shape[-3] != 3:
        raise UserError(f"expected float videos [..., 3, H, W] in [0, 1], got shape {tuple(x.shape)}")
    x = (x.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
    return x.movedim(-3, -1).cpu().numpy()


def from_uint8(videos: np.ndarray) -> Tensor:
    """Float ``[..., T, 3, H, W]`` in [0, 1] from uint8 ``[..., T, H, W, 3]``."""
    return torch.from_numpy(np.ascontiguousarray(videos)).movedim(-1, -3).float() / 255


def save_npz(path: str | Path, videos: Tensor | np.ndarray, prompts: Sequence[str]) -> Path:
    """Write ``videos`` (``[N, T, 3, H, W]`` float in [0, 1], or uint8 ``[N, T, H, W, 3]``) and their prompts.

    The file holds ``videos`` uint8 ``[N, T, H, W, 3]`` and ``prompts`` (str ``[N]``); it loads without pickle.
    """
    frames = to_uint8(videos)
    if frames.ndim != 5 or frames.shape[-1] != 3:
        raise UserError(f"expected videos [N, T, 3, H, W], got uint8 frames of shape {frames.shape}")
    if len(prompts) != len(frames):
        raise UserError(f"got {len(frames)} videos but {len(prompts)} prompts; need one prompt per video")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with naming(path), path.open("wb") as f:  # a file object: np.savez would append ".npz" to a path without it
        np.savez_compressed(f, videos=frames, prompts=np.asarray(list(prompts), dtype=str))
    return path


def load_npz(path: str | Path) -> tuple[Tensor, list[str]]:
    """Read a ``save_npz`` file: videos ``[N, T, 3, H, W]`` float in [0, 1] and the N prompts."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no video file {str(path)!r}")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise UserError(f"{str(path)!r} is not a readable .npz file ({e})") from e
    missing = {"videos", "prompts"} - set(arrays)
    if missing:
        raise UserError(f"{str(path)!r} lacks arrays {sorted(missing)}; it has {sorted(arrays)}")
    videos, prompts = arrays["videos"], arrays["prompts"]
    if videos.dtype != np.uint8 or videos.ndim != 5 or videos.shape[-1] != 3:
        raise UserError(f"{str(path)!r}: 'videos' must be uint8 [N, T, H, W, 3], got {videos.dtype} {videos.shape}")
    if prompts.ndim != 1 or prompts.dtype.kind != "U" or len(prompts) != len(videos):
        raise UserError(f"{str(path)!r}: 'prompts' must be {len(videos)} strings, got {prompts.dtype} {prompts.shape}")
    return from_uint8(videos), [str(p) for p in prompts]


def upscale_nearest(frames: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour upscaling of uint8 frames ``[..., H, W, 3]`` by an integer ``factor``."""
    if factor < 1:
        raise UserError(f"upscale factor must be a positive integer, got {factor}")
    return frames.repeat(factor, axis=-3).repeat(factor, axis=-2)


def write_mp4(path: str | Path, video: Tensor | np.ndarray, fps: float = 8, upscale: int = 8) -> Path:
    """Write one video (``[T, 3, H, W]`` float in [0, 1], or uint8 ``[T, H, W, 3]``) as H.264 ``.mp4``.

    Frames are upscaled nearest-neighbour by ``upscale``, then padded with black on the right and bottom to
    multiples of 16 (16 x 16 at 8x gives 128 x 128, no padding). Encoded by imageio's ffmpeg binary with
    imageio's defaults (libx264, yuv420p, crf 25), called here because imageio ignores ffmpeg's exit status: on a
    full disk it would return a truncated file.
    """
    from fractions import Fraction

    import imageio_ffmpeg  # deferred: only writers need the ffmpeg binary

    frames = upscale_nearest(to_uint8(video), upscale)
    if frames.ndim != 4:
        raise UserError(f"expected one video [T, 3, H, W], got frames of shape {frames.shape}")
    T, H, W, _ = frames.shape
    pad_h, pad_w = -H % _MP4_BLOCK, -W % _MP4_BLOCK
    frames = np.ascontiguousarray(np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0))))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-v", "error", "-f", "rawvideo", "-pix_fmt", "rgb24",
           "-s", f"{W + pad_w}x{H + pad_h}", "-r", str(Fraction(fps).limit_denominator()), "-i", "-", "-an",
           "-vcodec", "libx264", "-pix_fmt", "yuv420p", "-crf", "25", str(path)]
    proc = subprocess.run(cmd, input=frames.tobytes(), capture_output=True)
    if proc.returncode != 0:
        log = proc.stderr.decode(errors="replace")
        if "No space left on device" in log:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        last = log.strip().splitlines()[-1] if log.strip() else f"exit status {proc.returncode}"
        raise OSError(errno.EIO, f"ffmpeg failed: {last}", str(path))
    return path


def write_gif_grid(
    path: str | Path,
    videos: Tensor | np.ndarray,
    ncols: int = 8,
    upscale: int = 4,
    fps: float = 8,
) -> Path:
    """Write videos (``[N, T, 3, H, W]`` float in [0, 1], or uint8 ``[N, T, H, W, 3]``) as one looping GIF grid.

    Tiles are upscaled nearest-neighbour (16 px at 4x gives 64 px tiles) and separated by 1-px grey lines; cells
    past the last video stay grey. Pillow merges identical consecutive frames, so a still video reads back as
    fewer frames.
    """
    import imageio.v3 as imageio  # deferred: only writers need imageio

    tiles = upscale_nearest(to_uint8(videos), upscale)
    if tiles.ndim != 5 or len(tiles) == 0:
        raise UserError(f"expected videos [N, T, 3, H, W] with N >= 1, got frames of shape {tiles.shape}")
    N, T, h, w, _ = tiles.shape
    cols = max(1, min(ncols, N))
    rows = math.ceil(N / cols)
    grid = np.full((T, rows * (h + 1) - 1, cols * (w + 1) - 1, 3), _GAP_GREY, dtype=np.uint8)
    for i in range(N):
        y, x = (i // cols) * (h + 1), (i % cols) * (w + 1)
        grid[:, y : y + h, x : x + w] = tiles[i]
    # encoded in memory: Pillow writing to a full disk raises once, then again (a traceback) when imageio's
    # plugin is garbage-collected
    gif = imageio.imwrite("<bytes>", grid, extension=".gif", plugin="pillow", duration=1000 / fps, loop=0)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with naming(path):
        path.write_bytes(gif)
    return path
