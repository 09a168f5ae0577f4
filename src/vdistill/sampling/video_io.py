"""Writing sampled videos: ``.npz`` arrays to evaluate later, and ``.mp4`` / GIFs to look at.

Videos in memory are ``[N, T, 3, H, W]`` float in [0, 1]; on disk (npz) and in image files they are uint8
``[N, T, H, W, 3]``. The writers are sized for both worlds: a 16 x 16 toy video and a 81 x 480 x 832 Wan video.

* mp4: at the video's own size; only tiny videos are upscaled (nearest-neighbour, an integer factor that brings
  the short side to about :data:`MP4_SHORT_SIDE`). Frames are converted, upscaled and piped to the encoder one at a
  time, so writing holds one frame besides the video itself (measured in ``tests/sampling/test_video_writers.py``).
* GIF (a grid of videos, or one clip for TensorBoard): tiles upscaled while small, then box-downscaled until all
  frames of the GIF together hold at most :data:`GIF_MAX_PIXELS` pixels; built one video at a time.
* npz: every video, uint8; converted a few frames at a time (no float copy of the whole batch).

Each writer writes the one file it is given; atomicity is the caller's (``vdistill sample`` writes into a temporary
folder, :func:`vdistill.files.atomic_folder`). A writer that fails raises an ``OSError`` that names its file, also
where the library gives none (numpy's zip writer and Pillow on a full disk) or raises nothing at all (ffmpeg, which
only prints its error: its exit status is checked here).
"""

from __future__ import annotations

import errno
import io
import math
import os
import subprocess
import tempfile
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from vdistill.errors import UserError
from vdistill.files import naming

#: mp4s of videos whose short side is under this are upscaled by ``MP4_SHORT_SIDE // short side`` (16 px -> 16x,
#: 256 px); real sizes (ModelScope's 256, Wan's 480) are written 1:1.
MP4_SHORT_SIDE = 256
#: the most pixels a GIF holds over all its frames: 16 Mpx (48 MB of RGB) keeps the encoder's memory and the file
#: (a few MB) small; the toy grid of 48 videos (8 frames of 259 x 779) is 1.6 Mpx, four Wan videos (2 x 2 tiles of
#: 81 x 480 x 832) would be 130 Mpx and are box-downscaled 3x to 160 x 277 tiles (14 Mpx).
GIF_MAX_PIXELS = 16 * 2**20
#: GIF tiles smaller than this (in pixels, short side) are upscaled nearest-neighbour: 8 x 8 toys -> 8x.
GIF_MIN_SIDE = 64
#: ``videos.npz`` choices: ``auto`` writes it only when the videos hold at most :data:`NPZ_AUTO_BYTES`
NPZ_MODES = ("auto", "always", "never")
#: 64 MiB of uint8 frames: a toy bench (48 prompts x 4 repeats of 8 x 16 x 16 x 3: 1.1 MiB; 64 MiB would hold
#: 10,900 toy videos) and the tiny test folders stay far below it, while one Wan video (81 x 480 x 832 x 3 = 93 MiB)
#: is above it: real videos get mp4s only (save_npz's peak is the uint8 batch, 64 MiB here, plus a few frames).
NPZ_AUTO_BYTES = 64 * 2**20
# Grey of the 1-px lines between GIF grid tiles (the toy world's background is black).
_GAP_GREY = 128
# frames converted from float at a time: bounds to_uint8's float temporaries by 8 frames, not by the batch
_CHUNK_FRAMES = 8


def _frames_to_uint8(x: Tensor) -> np.ndarray:
    return (x.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).movedim(-3, -1).cpu().numpy()


def to_uint8(videos: Tensor | np.ndarray) -> np.ndarray:
    """uint8 ``[..., T, H, W, 3]`` from float ``[..., T, 3, H, W]`` in [0, 1]; uint8 input is taken as is.

    Converted :data:`_CHUNK_FRAMES` frames at a time into one preallocated array: the memory is the uint8 result
    plus a few frames, not several float copies of the whole batch."""
    if isinstance(videos, np.ndarray) and videos.dtype == np.uint8:
        return videos
    x = torch.as_tensor(videos)
    if x.dtype == torch.uint8:
        return x.cpu().numpy()
    if x.ndim < 3 or x.shape[-3] != 3:
        raise UserError(f"expected float videos [..., 3, H, W] in [0, 1], got shape {tuple(x.shape)}")
    H, W = x.shape[-2:]
    out = np.empty((*x.shape[:-3], H, W, 3), dtype=np.uint8)
    flat_in, flat_out = x.reshape(-1, 3, H, W), out.reshape(-1, H, W, 3)
    for lo in range(0, len(flat_in), _CHUNK_FRAMES):
        flat_out[lo: lo + _CHUNK_FRAMES] = _frames_to_uint8(flat_in[lo: lo + _CHUNK_FRAMES])
    return out


def from_uint8(videos: np.ndarray) -> Tensor:
    """Float ``[..., T, 3, H, W]`` in [0, 1] from uint8 ``[..., T, H, W, 3]``."""
    return torch.from_numpy(np.ascontiguousarray(videos)).movedim(-1, -3).float() / 255


def is_uint8(x: Tensor | np.ndarray) -> bool:
    return x.dtype == torch.uint8 if isinstance(x, Tensor) else np.asarray(x).dtype == np.uint8


def frames_of(video: Tensor | np.ndarray) -> tuple[tuple[int, int, int], Iterator[np.ndarray]]:
    """``((T, H, W), frames)`` of one video (``[T, 3, H, W]`` float in [0, 1], or uint8 ``[T, H, W, 3]``): an
    iterator of uint8 ``[H, W, 3]`` frames, each converted when it is reached."""
    uint8 = is_uint8(video)
    if video.ndim != 4 or video.shape[-1 if uint8 else -3] != 3:
        want = "uint8 [T, H, W, 3]" if uint8 else "float [T, 3, H, W]"
        raise UserError(f"expected one video, {want}, got shape {tuple(video.shape)}")
    T, H, W = (video.shape[:3] if uint8 else (video.shape[0], *video.shape[2:]))
    return (T, H, W), (to_uint8(frame) for frame in video)


def videos_nbytes(videos: Tensor | np.ndarray) -> int:
    """Bytes of ``videos`` (``[N, T, 3, H, W]`` or ``[N, T, H, W, 3]``) as uint8, as ``videos.npz`` stores them."""
    return math.prod(videos.shape)


def check_npz(mode: object, what: str = "npz") -> str:
    """``mode`` if it is one of :data:`NPZ_MODES`, else one line naming ``what``."""
    if mode not in NPZ_MODES:
        raise UserError(f"{what} must be one of {', '.join(NPZ_MODES)}; got {mode!r}")
    return mode


def wants_npz(videos: Tensor | np.ndarray, mode: str = "auto") -> bool:
    """Whether ``videos.npz`` is written for ``videos``: ``always``, ``never``, or (``auto``) when their uint8
    frames hold at most :data:`NPZ_AUTO_BYTES`."""
    return check_npz(mode) == "always" or (mode == "auto" and videos_nbytes(videos) <= NPZ_AUTO_BYTES)


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
    # stored, not zipped: zlib took 0.44 s of a 2-step Wan student's 8.4 s `vdistill sample` (BENCHMARKS.md, our
    # overhead) and natural video barely compresses; a file object, as np.savez appends ".npz" to a bare path
    with naming(path), path.open("wb") as f:
        np.savez(f, videos=frames, prompts=np.asarray(list(prompts), dtype=str))
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


def check_factor(factor: object) -> int:
    """``factor`` if it is an integer >= 1, else one line."""
    if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
        raise UserError(f"upscale factor must be a positive integer, got {factor!r}")
    return factor


def upscale_nearest(frames: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour upscaling of uint8 frames ``[..., H, W, 3]`` by an integer ``factor``."""
    if check_factor(factor) == 1:
        return frames
    return frames.repeat(factor, axis=-3).repeat(factor, axis=-2)


def downscale_box(frame: Tensor, factor: int) -> Tensor:
    """Box (area) downscaling of one float frame ``[3, H, W]`` by an integer ``factor``: each output pixel is the
    mean of a ``factor x factor`` block (``avg_pool2d``); the last ``H mod factor`` rows and columns are dropped."""
    if factor == 1:
        return frame
    return F.avg_pool2d(frame[None], (min(factor, frame.shape[-2]), min(factor, frame.shape[-1])))[0]


def tiles_of(video: Tensor | np.ndarray, up: int = 1, down: int = 1) -> Iterator[np.ndarray]:
    """uint8 ``[H', W', 3]`` frames of one video (``[T, 3, H, W]`` float in [0, 1], or uint8 ``[T, H, W, 3]``),
    box-downscaled by ``down`` (in float, before rounding) or upscaled nearest-neighbour by ``up``, one at a time."""
    if down == 1:
        for frame in frames_of(video)[1]:
            yield upscale_nearest(frame, up)
        return
    uint8 = is_uint8(video)
    frames_of(video)  # checks the shape
    for frame in video:
        x = torch.as_tensor(frame)
        x = x.movedim(-1, 0).float() / 255 if uint8 else x.float()
        yield upscale_nearest(to_uint8(downscale_box(x, down)), up)


def mp4_upscale(height: int, width: int) -> int:
    """The mp4 upscaling factor of a ``height x width`` video: ``MP4_SHORT_SIDE // short side``, at least 1."""
    return max(1, MP4_SHORT_SIDE // max(1, min(height, width)))


def write_mp4(path: str | Path, video: Tensor | np.ndarray, fps: float = 8, upscale: int | None = None) -> Path:
    """Write one video (``[T, 3, H, W]`` float in [0, 1], or uint8 ``[T, H, W, 3]``) as H.264 ``.mp4``.

    ``upscale``: nearest-neighbour factor (``None``: :func:`mp4_upscale`, 16x for a 16 x 16 toy, 1x from 256 px
    up). An odd size is padded with one black row / column (yuv420p needs even sizes; no resizing, so pixels stay
    square). Encoded by imageio's ffmpeg binary with imageio's defaults (libx264, yuv420p, crf 25), called here
    because imageio ignores ffmpeg's exit status (on a full disk it would return a truncated file). The frames are
    piped one at a time as they are converted: the writer holds one (upscaled) frame, never the whole video.
    """
    from fractions import Fraction

    import imageio_ffmpeg  # deferred: only writers need the ffmpeg binary

    (T, H, W), frames = frames_of(video)
    k = mp4_upscale(H, W) if upscale is None else check_factor(upscale)
    h, w = H * k, W * k
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-v", "error", "-f", "rawvideo", "-pix_fmt", "rgb24",
           "-s", f"{w + w % 2}x{h + h % 2}", "-r", str(Fraction(fps).limit_denominator()), "-i", "-", "-an",
           "-vcodec", "libx264", "-pix_fmt", "yuv420p", "-crf", "25", str(path)]
    # ffmpeg's messages go to a file, not a pipe: a pipe nobody reads while frames are written could fill and block
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=log)
        written = 0
        try:
            try:
                for frame in frames:
                    frame = upscale_nearest(frame, k)
                    if h % 2 or w % 2:
                        frame = np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)))
                    proc.stdin.write(np.ascontiguousarray(frame).data)
                    written += 1
                proc.stdin.close()
            except BrokenPipeError:  # ffmpeg stopped reading: its exit status and message say why
                pass
            code = proc.wait()
        finally:
            if proc.poll() is None:  # an exception (Ctrl-C) while writing: no encoder left behind
                proc.kill()
                proc.wait()
        log.seek(0)
        text = log.read().decode(errors="replace")
    if code != 0 or written != T:
        if "No space left on device" in text:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        last = text.strip().splitlines()[-1] if text.strip() else f"exit status {code}"
        raise OSError(errno.EIO, f"ffmpeg failed after {written} of {T} frames: {last}", str(path))
    return path


def gif_scale(frames: int, height: int, width: int, rows: int, cols: int, upscale: int,
              max_pixels: int = GIF_MAX_PIXELS) -> tuple[int, int]:
    """``(up, down)``: the largest nearest-neighbour factor ``up <= upscale`` at which a ``rows x cols`` grid of
    ``frames x height x width`` tiles (1-px gaps) holds at most ``max_pixels`` pixels over all frames, else
    ``(1, down)`` with the smallest box-downscaling factor that fits (1-px tiles when nothing does)."""
    def pixels(th: int, tw: int) -> int:
        return frames * (rows * (th + 1) - 1) * (cols * (tw + 1) - 1)

    for up in range(upscale, 0, -1):
        if pixels(height * up, width * up) <= max_pixels:
            return up, 1
    for down in range(2, max(height, width)):
        if pixels(max(1, height // down), max(1, width // down)) <= max_pixels:
            return 1, down
    return 1, max(height, width)


def gif_grid(videos: Tensor | np.ndarray, ncols: int = 8, upscale: int | None = None,
             max_pixels: int = GIF_MAX_PIXELS) -> np.ndarray:
    """uint8 ``[T, H', W', 3]``: videos (``[N, T, 3, H, W]`` float in [0, 1], or uint8 ``[N, T, H, W, 3]``) tiled
    row by row, ``ncols`` per row, with 1-px grey lines between tiles; cells past the last video stay grey.

    Tiles are upscaled nearest-neighbour by ``upscale`` (``None``: to at least :data:`GIF_MIN_SIDE` px, so 4x for
    16 x 16 toys, 1x from 64 px up), less or box-downscaled (:func:`gif_scale`) when the grid would hold more than
    ``max_pixels`` pixels over all frames. Built one frame of one video at a time.
    """
    if videos.ndim != 5 or len(videos) == 0:
        raise UserError(f"expected videos [N, T, 3, H, W] with N >= 1, got shape {tuple(videos.shape)}")
    N = len(videos)
    (T, H, W), _ = frames_of(videos[0])
    up = max(1, GIF_MIN_SIDE // max(1, min(H, W))) if upscale is None else check_factor(upscale)
    cols = max(1, min(ncols, N))
    rows = math.ceil(N / cols)
    up, down = gif_scale(T, H, W, rows, cols, up, max_pixels)
    h, w = (H * up, W * up) if down == 1 else (max(1, H // down), max(1, W // down))
    grid = np.full((T, rows * (h + 1) - 1, cols * (w + 1) - 1, 3), _GAP_GREY, dtype=np.uint8)
    for i in range(N):
        y, x = (i // cols) * (h + 1), (i % cols) * (w + 1)
        for t, tile in enumerate(tiles_of(videos[i], up, down)):
            grid[t, y: y + h, x: x + w] = tile
    return grid


def encode_gif(frames: np.ndarray, fps: float = 8) -> bytes:
    """A looping animated GIF of uint8 frames ``[T, H, W, 3]``, encoded in memory by Pillow.

    A frame of at most 256 colours (the toy world, grid lines included) keeps its colours exactly; others are
    quantized to 256 colours with Pillow's fast octree (Pillow's default median cut took 23 s for 81 frames of
    240 x 416, the octree 0.15 s). Pillow merges identical consecutive frames, so a still video reads back as fewer
    frames; GIF frame durations are in 10 ms units (16 fps plays at 60 or 70 ms per frame)."""
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or len(frames) == 0:
        raise UserError(f"expected uint8 frames [T, H, W, 3] with T >= 1, got {frames.dtype} {frames.shape}")
    images = []
    for frame in frames:
        image = Image.fromarray(np.ascontiguousarray(frame))
        exact = image.getcolors(256) is not None
        images.append(image.convert("P", palette=Image.Palette.ADAPTIVE) if exact
                      else image.quantize(256, method=Image.Quantize.FASTOCTREE))
    buffer = io.BytesIO()
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:], duration=1000 / fps, loop=0)
    return buffer.getvalue()


def write_gif_grid(
    path: str | Path,
    videos: Tensor | np.ndarray,
    ncols: int = 8,
    upscale: int | None = None,
    fps: float = 8,
    max_pixels: int = GIF_MAX_PIXELS,
) -> Path:
    """Write videos (``[N, T, 3, H, W]`` float in [0, 1], or uint8 ``[N, T, H, W, 3]``) as one looping GIF grid
    (:func:`gif_grid`: 16 px toy tiles at 4x are 64 px; real videos downscaled to fit ``max_pixels``)."""
    # encoded in memory, written in one call: a full disk fails in write_bytes, named by naming()
    gif = encode_gif(gif_grid(videos, ncols, upscale, max_pixels), fps)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with naming(path):
        path.write_bytes(gif)
    return path
