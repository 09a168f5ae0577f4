"""Tiny videos written with PyAV for the video datamodule tests: frame ``i`` shows ``i`` in binary (8 white or black
blocks across its top) over a grey ground, so a decoded frame tells which source frame it is."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import torch

H, W = 32, 64  #: the coded videos' size: 8 bit blocks of 8 x 8 in the top rows
CODECS = {".mp4": ("libx264", "yuv420p", {"crf": "0", "g": "4"}),
          ".webm": ("libvpx", "yuv420p", {"crf": "4", "b": "2M"}), ".gif": ("gif", "rgb8", {})}


def coded_frames(n: int) -> np.ndarray:
    """``[n, H, W, 3]`` uint8: frame ``i`` has bit ``b`` of ``i`` as a white (1) or black (0) 8 x 8 block at
    columns ``8b .. 8b + 7`` of rows 0..7, grey below."""
    frames = np.full((n, H, W, 3), 128, dtype=np.uint8)
    for i in range(n):
        for b in range(8):
            frames[i, :8, 8 * b: 8 * b + 8] = 255 if (i >> b) & 1 else 0
    return frames


def frame_codes(video: torch.Tensor) -> list[int]:
    """The source frame index of each frame of a decoded ``[T, 3, H, W]`` video of :func:`coded_frames` (no
    resize)."""
    centres = video[:, :, 2:6, 2::8][:, :, :, :8].mean(dim=(1, 2))  # [T, 8]: the middle of each bit block
    bits = (centres > 0.5).long()
    return (bits * (2 ** torch.arange(8))).sum(1).tolist()


def write_video(path: Path, frames: np.ndarray, fps: int = 24) -> Path:
    """Encode ``frames`` ``[N, H, W, 3]`` uint8 with the codec of ``path``'s extension (mp4: lossless h264 with a key
    frame every 4 frames, so seeking matters; webm: vp8; gif: the 256-colour palette)."""
    codec, pix_fmt, options = CODECS[path.suffix]
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], pix_fmt
        stream.options = options
        for image in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())
    return path
