"""``VideoClips``: the Lightning datamodule of real captioned clips (the dataset, its loader and how bad files are
skipped: :mod:`vdistill.data.videos`, which imports no Lightning, so ``vdistill preprocess`` starts without it)."""

from __future__ import annotations

import os
from pathlib import Path

import lightning as L

from vdistill.data.decode import ClipSpec
from vdistill.data.videos import VideoClipDataset, VideoLoader, check_captions_file, format_fields, log, video_loader
from vdistill.errors import UserError


class VideoClips(L.LightningDataModule):
    """Real video clips with captions from a CSV / TSV / JSONL file (WebVid / OpenVid style), decoded by PyAV.

    How clips are sampled and bad files skipped: the module docstring.

    Args:
        captions: the captions file: one row per video, with its path and caption.
        video_root: the folder of the videos; relative paths start here and every path must stay inside it (None:
            relative to the captions file's folder, absolute paths anywhere).
        batch_size: clips per batch.
        num_frames, height, width: the clip (defaults: T2V-Turbo's ``MP4Dataset``, 16 frames of 320 x 512).
        fps: frames per second the clip is sampled at (T2V-Turbo 8; Wan2.1 16); None: every ``stride``-th frame.
        stride: sample every ``stride``-th source frame (give it with ``fps: null``).
        random_start: start each clip at a seeded random frame (False: at the first frame).
        path_column, caption_column: the columns of the path and the caption (OpenVid-1M: ``video``, ``caption``).
        path_format: the path built from columns instead, e.g. ``"{page_dir}/{videoid}.mp4"`` (WebVid, with
            ``caption_column: name``).
        seed: seeds the start frames (the order is the run's ``seed_everything``).
        num_workers: DataLoader worker processes that decode (0: in the training process).

    Training batches are ``[videos [B, T, 3, H, W] float32 in [0, 1], prompts (B str)]``: real clips for
    consistency distillation (``provides``).
    """

    provides = ("videos",)

    def __init__(self, captions: str, video_root: str | None = None, batch_size: int = 1, num_frames: int = 16,
                 height: int = 320, width: int = 512, fps: float | None = 8.0, stride: int | None = None,
                 random_start: bool = True, path_column: str = "path", caption_column: str = "caption",
                 path_format: str | None = None, seed: int = 0, num_workers: int = 4) -> None:
        super().__init__()
        for name, value, least in (("batch_size", batch_size, 1), ("num_frames", num_frames, 1),
                                   ("height", height, 1), ("width", width, 1), ("stride", stride, 1),
                                   ("num_workers", num_workers, 0)):
            if value is not None and value < least:
                raise UserError(f"data {name} is {value}; it must be at least {least}")
        if fps is not None and not fps > 0:
            raise UserError(f"data fps is {fps}; it must be > 0 (or null with a stride)")
        if fps is not None and stride is not None:
            raise UserError(f"data fps ({fps}) and stride ({stride}): give one of them (fps: null to sample every "
                            "stride-th frame)")
        if path_format is not None:
            format_fields(path_format)
        check_captions_file(Path(captions))  # the rows are read in setup: the file's errors come before any model
        self.save_hyperparameters()
        self.spec = ClipSpec(num_frames, height, width, fps, stride or 1)
        self.dataset: VideoClipDataset | None = None

    def build(self) -> VideoClipDataset:
        """Read the captions file (one warning for the rows it drops); refuse one where no file is found."""
        hp = self.hparams
        ds = VideoClipDataset(hp.captions, hp.video_root, self.spec, hp.path_column, hp.caption_column,
                              hp.path_format, hp.seed, hp.random_start)
        if len(ds) == 0:
            raise UserError(f"captions file {hp.captions!r} has no usable row: {ds.report()}")
        if ds.skipped():
            log.warning("%s", ds.report())
        first = [ds.path(int(r)) for r in ds.rows[:16]]
        if not any(os.path.isfile(p) for p in first):
            raise UserError(f"none of the first {len(first)} videos of {hp.captions!r} exists (e.g. {first[0]!r}); "
                            f"check video_root ({ds.root!r}) and path_column / path_format")
        self.dataset = ds
        return ds

    def setup(self, stage: str | None = None) -> None:
        if self.dataset is None:
            self.build()

    def train_dataloader(self) -> VideoLoader:
        # resumable mid-epoch (same order, same start frames, same replacements of bad files), split between ranks
        dataset = self.dataset if self.dataset is not None else self.build()
        return video_loader(dataset, self.trainer, batch_size=self.hparams.batch_size,
                            num_workers=self.hparams.num_workers)
