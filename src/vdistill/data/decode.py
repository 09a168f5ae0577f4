"""Decoding one training clip from a video file: ``num_frames`` frames at a target ``fps`` (or every ``stride``-th
frame) from a seeded random start, resized (short side) and centre-cropped, as uint8 ``[T, H, W, 3]``.

The decoder is PyAV (``av``: the FFmpeg libraries behind a Python API). Its pip wheels bundle FFmpeg with the h264,
hevc, vp8 / vp9, av1 (dav1d) and gif decoders, so a fresh ``pip install -r requirements.txt`` decodes without a
system FFmpeg. The others, as checked here: torchvision 0.29 has no video reader left (``torchvision.io`` exports
none, and ``torchvision.io.video`` fails to import); torchcodec, its successor, loads the system's FFmpeg shared
libraries, which pip cannot install and a fresh machine may lack; decord's last release is from 2021;
imageio-ffmpeg starts an ``ffmpeg`` process per file and pipes raw frames out of it (failures come back as exit
codes and stderr text). PyAV seeks to the key frame before the clip and decodes only up to its last frame, and
scales each frame in FFmpeg's swscale (area filter) before it becomes a numpy array, so a 1080p source never exists
as a full-size float tensor.

Frame choice. A clip of ``T`` frames spans ``(T - 1) * step`` source frames, ``step = source_fps / fps`` (or
``stride``); its start ``s0`` is an integer frame drawn uniformly from those that fit, and frame ``k`` is the source
frame nearest to time ``first + (s0 + k * step) / source_fps`` (ties to the earlier one): T2V-Turbo's
``read_video_to_tensor`` (``round(start + k * stride)``) written on timestamps, so variable-frame-rate files and
containers with rounded timestamps (webm: milliseconds) pick the same frames.

A file is opened as ``file:<absolute path>`` with the demuxer its extension names (:data:`FORMATS`): a path from a
captions file never selects an FFmpeg protocol (``http:``, ``concat:``) or a demuxer that opens other files (HLS
playlists, concat lists). Any failure is a :class:`ClipError` with a reason (``missing``, ``unreadable``, ``too
short``) that the dataset counts (:mod:`vdistill.data.videos`).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import av
import numpy as np

#: file extension -> FFmpeg demuxer (the only containers opened)
FORMATS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".webm": "matroska", ".mkv": "matroska", ".gif": "gif"}


class ClipError(Exception):
    """A file that gives no clip: ``reason`` is ``missing``, ``unreadable`` or ``too short``; ``detail`` says why."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason, self.detail = reason, detail


@dataclass(frozen=True)
class ClipSpec:
    """What a clip is: ``num_frames`` frames of ``height x width``, at ``fps`` frames per second of the source's time
    (None: every ``stride``-th source frame)."""

    num_frames: int
    height: int
    width: int
    fps: float | None = None
    stride: int = 1


def read_clip(path: str, spec: ClipSpec, rng: np.random.Generator | None = None) -> np.ndarray:
    """The clip of ``spec`` from the video file ``path``: uint8 ``[T, H, W, 3]`` RGB. ``rng`` draws the start frame
    (None: the first frame). Raises :class:`ClipError` for a missing, unreadable or too short file."""
    demuxer = FORMATS.get(os.path.splitext(path)[1].lower())
    if demuxer is None:
        raise ClipError("unreadable", f"not one of {', '.join(FORMATS)}")
    if not os.path.isfile(path):
        raise ClipError("missing")
    try:
        with av.open("file:" + os.path.abspath(path), format=demuxer) as container:
            if not container.streams.video:
                raise ClipError("unreadable", "no video stream")
            stream = container.streams.video[0]
            first, rate, count = probe(container, stream)
            step = rate / spec.fps if spec.fps else float(spec.stride)
            last_start = math.floor(count - 1 - (spec.num_frames - 1) * step + 1e-6)
            if last_start < 0:
                raise ClipError("too short", f"{count} frames at {rate:g} fps; the clip spans "
                                f"{(spec.num_frames - 1) * step + 1:g}")
            start = int(rng.integers(0, last_start + 1)) if rng is not None else 0
            targets = [first + (start + k * step) / rate for k in range(spec.num_frames)]
            frames = decode_at(container, stream, targets, rate, spec, seek=start > 0)
            if frames is None:  # the seek landed past the clip (a broken index): decode from the start instead
                container.seek(0, stream=stream)
                frames = decode_at(container, stream, targets, rate, spec, seek=False)
    except (av.error.FFmpegError, OSError, ValueError, RuntimeError) as err:
        raise ClipError("unreadable", str(err).replace("file:" + os.path.abspath(path), "").strip(": ")) from None
    if len(frames) < spec.num_frames:
        raise ClipError("too short", f"it ends after {len(frames)} of the clip's {spec.num_frames} frames")
    return np.stack(frames)


def probe(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> tuple[float, float, int]:
    """``(time of the first frame in seconds, frames per second, frame count)`` from the container's headers (the
    count from the duration when the container does not store it, e.g. webm)."""
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    if not rate:
        raise ClipError("unreadable", "no frame rate")
    first = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
    count = stream.frames
    if not count:
        if stream.duration is not None:
            seconds = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            seconds = container.duration / av.time_base
        else:
            raise ClipError("unreadable", "no duration")
        count = int(round(seconds * float(rate)))
    return first, float(rate), int(count)


def decode_at(container: av.container.InputContainer, stream: av.video.stream.VideoStream, targets: list[float],
              rate: float, spec: ClipSpec, seek: bool) -> list[np.ndarray] | None:
    """Decode the frames nearest to the ``targets`` times (seconds, increasing), resized and cropped; stops after
    the last one. ``seek``: jump to the key frame before the first target first. None when, after seeking, the
    first frame decoded is already past the first target (the caller then decodes from the start)."""
    half = 0.5 / rate
    if seek:
        container.seek(max(int(math.floor((targets[0] - half) / float(stream.time_base))), 0), stream=stream,
                       backward=True, any_frame=False)
    out: list[np.ndarray] = []
    for frame in container.decode(stream):
        if frame.pts is None:
            continue
        t = float(frame.time)
        if seek and not out and t > targets[0] + half:
            return None
        image = None
        # the frame nearest to a target is the first one past the midpoint to its predecessor
        while len(out) < len(targets) and t >= targets[len(out)] - half - 1e-9:
            image = resize_crop(frame, spec.height, spec.width) if image is None else image
            out.append(image)
        if len(out) == len(targets):
            break
    return out


def resize_crop(frame: av.VideoFrame, height: int, width: int) -> np.ndarray:
    """``frame`` scaled so that it covers ``height x width`` (short side, aspect kept) and centre-cropped: uint8
    ``[height, width, 3]`` RGB. Scaling is FFmpeg's area filter (averages when shrinking, like an antialiased
    resize)."""
    scale = max(height / frame.height, width / frame.width)
    h, w = max(height, round(frame.height * scale)), max(width, round(frame.width * scale))
    image = frame.to_ndarray(width=w, height=h, format="rgb24", interpolation="AREA")
    top, left = (h - height) // 2, (w - width) // 2
    return np.ascontiguousarray(image[top: top + height, left: left + width])
