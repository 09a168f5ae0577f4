"""The critic interface: a frozen text-video (or text-image) reward model.

A critic maps pixel videos ``[B, T, 3, H, W]`` in [0, 1] and prompts to one score per video, differentiably
with respect to the pixels, so a student can be trained on ``-beta * score`` (T2V-Turbo's mixed reward feedback).

* Image critics (HPSv2, PickScore) score ``num_frames`` random frames of each video and average the
  per-frame scores (T2V-Turbo v1 used 5-6 frames, v2 used 2).
* Video critics (ViCLIP, InternVideo2) look at ``num_frames`` frames at an even stride with a random offset.
* When ``T`` equals the critic's frame count every frame is used, in order, deterministically.

Critics are frozen where they are built (``requires_grad`` off) and stay in eval mode even when a parent
module calls ``.train()``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vdistill.errors import UserError


def strided_frame_indices(batch: int, total: int, n: int, device: torch.device | str = "cpu") -> Tensor:
    """``[batch, n]`` frame indices at stride ``total // n`` from a random offset, one offset per video.

    ``total == n`` gives ``0..n-1``; ``total < n`` repeats frames evenly (``linspace`` rounded), deterministically.
    """
    if total <= n:
        idx = torch.linspace(0, total - 1, n, device=device).round().long()
        return idx.expand(batch, n)
    stride = total // n
    max_offset = total - ((n - 1) * stride + 1)
    offset = torch.randint(0, max_offset + 1, (batch, 1), device=device)
    return offset + stride * torch.arange(n, device=device)


def random_frame_indices(batch: int, total: int, n: int, device: torch.device | str = "cpu") -> Tensor:
    """``[batch, min(n, total)]`` distinct random frames per video (sorted); all frames in order if ``total <= n``."""
    if total <= n:
        return torch.arange(total, device=device).expand(batch, total)
    return torch.rand(batch, total, device=device).argsort(dim=1)[:, :n].sort(dim=1).values


def gather_frames(videos: Tensor, idx: Tensor) -> Tensor:
    """``videos[b, idx[b]]`` for each ``b``: ``[B, T, ...]`` and ``[B, n]`` -> ``[B, n, ...]``."""
    return videos[torch.arange(videos.shape[0], device=videos.device)[:, None], idx]


class Critic(nn.Module, ABC):
    """A frozen reward model scoring videos against prompts.

    Subclasses set ``name`` and ``kind`` and implement :meth:`_encode` (frames or clips -> raw features) and
    :meth:`_encode_text` (prompts -> raw features); this class normalises, selects frames and scores.

    Args:
        num_frames: frames scored per video (random frames for image critics, strided for video critics).
    """

    name: ClassVar[str] = "critic"
    kind: ClassVar[str] = "image"  # "image" or "video"

    def __init__(self, num_frames: int) -> None:
        super().__init__()
        if num_frames < 1:
            raise UserError(f"{self.name}: num_frames must be >= 1, got {num_frames}")
        self.frames = int(num_frames)

    # ---- what a subclass provides -------------------------------------------------------------------------
    @abstractmethod
    def _encode(self, pixels: Tensor) -> Tensor:
        """Image critics: ``[N, 3, H, W]``; video critics: ``[B, n, 3, H, W]``; in [0, 1] -> ``[*, D]``."""

    @abstractmethod
    def _encode_text(self, prompts: list[str]) -> Tensor:
        """``list[str]`` -> ``[N, D]`` (not yet normalised)."""

    def score_scale(self) -> Tensor | float:
        """Multiplies the cosine to give the official score (1 for all but PickScore's logit scale)."""
        return 1.0

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute the vision tower's activations in backward (saves memory when scoring with gradients)."""
        raise UserError(f"critic {self.name!r} does not offer gradient checkpointing")

    # ---- the interface ------------------------------------------------------------------------------------
    def freeze(self) -> Critic:
        self.requires_grad_(False)
        return super().train(False)

    def train(self, mode: bool = True) -> Critic:
        # A reward model is never trained here; Lightning's .train() on the parent must not flip dropout on.
        return super().train(False)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def select_frames(self, videos: Tensor) -> Tensor:
        """``[B, T, 3, H, W]`` -> ``[B, n, 3, H, W]``: the frames this critic scores (see the module doc)."""
        _check_videos(videos, self.name)
        b, t = videos.shape[:2]
        pick = random_frame_indices if self.kind == "image" else strided_frame_indices
        return gather_frames(videos, pick(b, t, self.frames, videos.device))

    def embed_text(self, prompts: list[str]) -> Tensor:
        """``list[str]`` -> L2-normalised ``[N, D]``."""
        if isinstance(prompts, str):
            prompts = [prompts]
        return F.normalize(self._encode_text(list(prompts)).float(), dim=-1)

    def embed_video(self, videos: Tensor) -> Tensor:
        """``[B, T, 3, H, W]`` in [0, 1] -> L2-normalised ``[B, D]``.

        Video critics embed their selected frames as one clip; image critics embed one frame, so ``T`` must be 1
        (use :meth:`embed_frames` for many).
        """
        _check_videos(videos, self.name)
        if self.kind == "image":
            if videos.shape[1] != 1:
                raise UserError(f"{self.name} is an image critic: embed_video takes T = 1 frame, got "
                                f"T = {videos.shape[1]}; use embed_frames or call the critic to score videos")
            return self.embed_frames(videos[:, 0])
        return F.normalize(self._encode(self.select_frames(videos).to(self.dtype)).float(), dim=-1)

    def embed_frames(self, frames: Tensor) -> Tensor:
        """Image critics: ``[N, 3, H, W]`` in [0, 1] -> L2-normalised ``[N, D]``."""
        if self.kind != "image":
            raise UserError(f"{self.name} is a video critic: it embeds clips, use embed_video")
        return F.normalize(self._encode(frames.to(self.dtype)).float(), dim=-1)

    def forward(self, videos: Tensor, prompts: list[str]) -> Tensor:
        """Score video ``i`` against prompt ``i``: ``[B, T, 3, H, W]`` in [0, 1] + ``B`` prompts -> ``[B]``."""
        _check_videos(videos, self.name)
        if isinstance(prompts, str):
            prompts = [prompts]
        if len(prompts) != videos.shape[0]:
            raise UserError(f"{self.name}: got {videos.shape[0]} videos but {len(prompts)} prompts")
        with torch.no_grad():
            text = self.embed_text(prompts)
        if self.kind == "video":
            return (self.embed_video(videos) * text).sum(-1) * self.score_scale()
        frames = self.select_frames(videos)
        b, n = frames.shape[:2]
        emb = self.embed_frames(frames.flatten(0, 1)).view(b, n, -1)
        return ((emb * text[:, None]).sum(-1) * self.score_scale()).mean(dim=1)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, kind={self.kind!r}, frames={self.frames}"


def _check_videos(videos: Tensor, name: str) -> None:
    if videos.ndim != 5 or videos.shape[2] != 3:
        raise UserError(f"{name}: expected pixel videos [B, T, 3, H, W] in [0, 1], got shape {tuple(videos.shape)}")
