"""Video samples of the student during training: mp4s and a GIF grid in the run folder, clips in the loggers.

What each logger gets (every logger of the trainer, on global rank 0):

* ``TensorBoardLogger``: one clip per video for the first ``mp4`` videos (tags ``samples/video/00``, ...) and the
  grid (``samples/grid``). A clip is the summary ``SummaryWriter.add_video(tag, clip[None], fps=fps)`` writes
  (``torch.utils.tensorboard.summary.video``: an image summary whose ``encoded_image_string`` is an animated GIF,
  shown animated in TensorBoard's Images tab; TensorBoard has no other video summary), encoded here with Pillow:
  ``add_video`` itself needs moviepy 1.x (``moviepy.editor``, removed in moviepy 2.0) and without it prints a line
  and writes an empty value. Clips are upscaled while tiny (to 64 px) and box-downscaled to at most
  :data:`CLIP_MAX_PIXELS` over their frames; ``add_video`` truncates to uint8 where we round.
* a logger with Lightning's ``log_video(key, videos, step, **kwargs)`` (``WandbLogger``): the mp4 files, one
  ``wandb.Video`` each, captioned with their prompts (a file path needs no moviepy).
* ``MLFlowLogger`` (no video API): the step's sample folder as run artifacts
  (``MlflowClient.log_artifacts(run_id, folder, "samples/step_XXXXXX")``).
* any other logger (``CSVLogger``, ...): nothing; the files are in the run folder.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import lightning as L
from lightning.pytorch.loggers import Logger, MLFlowLogger, TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info
from PIL import Image
from torch import Tensor

from vdistill.callbacks.periodic import PeriodicSampling
from vdistill.callbacks.target import backbone_of
from vdistill.errors import UserError
from vdistill.sampling.generate import Generated, video_size
from vdistill.sampling.video_io import check_npz, encode_gif, gif_grid, save_npz, wants_npz, write_gif_grid, write_mp4

#: the most pixels a TensorBoard clip holds over all its frames: 4 Mpx (a 81 x 480 x 832 Wan video is logged at
#: 160 x 277: 1.9 MB of GIF for the smooth test scene of tests/sampling, 2.5 s to encode on a shared 2-core CPU), so an
#: event file grows by a few MB per sampling, not by the videos' size.
CLIP_MAX_PIXELS = 4 * 2**20


def image_summary(tag: str, gif: bytes, height: int, width: int):
    """The ``Summary`` of an animated GIF image, as ``torch.utils.tensorboard.summary.video`` builds it."""
    from tensorboard.compat.proto.summary_pb2 import Summary

    return Summary(value=[Summary.Value(tag=tag, image=Summary.Image(
        height=height, width=width, colorspace=3, encoded_image_string=gif))])


def clip_summary(tag: str, video: Tensor, fps: float, max_pixels: int = CLIP_MAX_PIXELS):
    """What ``SummaryWriter.add_video(tag, video[None], fps=fps)`` writes for one video ``[T, 3, H, W]`` in [0, 1]
    (module docstring), at a size that is visible (tiles of at least 64 px) and bounded (``max_pixels``)."""
    frames = gif_grid(video[None], ncols=1, max_pixels=max_pixels)
    return image_summary(tag, encode_gif(frames, fps), frames.shape[1], frames.shape[2])


def log_tensorboard(logger: TensorBoardLogger, summaries: list, step: int) -> None:
    """Write built ``Summary`` protos (:func:`image_summary`) into the logger's event file at ``step``.

    Through ``SummaryWriter._get_file_writer().add_summary`` (private, torch 2.14), as every ``SummaryWriter.add_*``
    writes: the writer has no public method that takes a built summary, and ``add_video``, the public one that
    builds this summary, needs moviepy 1.x (module docstring). The public ``file_writer`` attribute is None once
    the writer is closed (Lightning's ``finalize`` closes it after each fit); ``_get_file_writer`` reopens it.
    """
    writer = logger.experiment
    for summary in summaries:
        writer._get_file_writer().add_summary(summary, step)
    writer.flush()


def log_gif(trainer: L.Trainer, tag: str, gif: bytes, step: int) -> int:
    """Write the animated GIF ``gif`` as an image summary ``tag`` at ``step`` to every TensorBoard logger of the
    trainer; returns how many loggers got it."""
    with Image.open(io.BytesIO(gif)) as image:
        width, height = image.size
    loggers = [logger for logger in trainer.loggers if isinstance(logger, TensorBoardLogger)]
    for logger in loggers:
        log_tensorboard(logger, [image_summary(tag, gif, height, width)], step)
    return len(loggers)


def log_media(loggers: Sequence[Logger], step: int, folder: Path, grid: object, clips: list, mp4s: list[Path],
              prompts: list[str], video_tag: str) -> list[str]:
    """Give every logger what it supports (module docstring); returns one word per logger that got something.

    Args:
        grid: the GIF grid's image summary; clips: the clips' summaries (TensorBoard).
        mp4s: the mp4 files written; prompts: their prompts (W&B captions).
        folder: the step's sample folder (MLflow artifacts).
    """
    got = []
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            log_tensorboard(logger, [grid, *clips], step)
            got.append("TensorBoard")
        elif isinstance(logger, MLFlowLogger):
            logger.experiment.log_artifacts(logger.run_id, str(folder), f"samples/{folder.name}")
            got.append("MLflow")
        elif callable(getattr(logger, "log_video", None)) and mp4s:
            logger.log_video(video_tag, [str(p) for p in mp4s], step=step, caption=list(prompts[: len(mp4s)]))
            got.append(type(logger).__name__.removesuffix("Logger") or type(logger).__name__)
    return got


class VideoSamples(PeriodicSampling):
    """mp4s, a GIF grid and logger clips of the student on fixed prompts every N steps.

    Every ``every_n_steps`` optimizer steps (and at the end of ``fit``), sample the student on a fixed prompt set
    with fixed seeds and write ``<log_dir>/samples/step_XXXXXX/``: ``mp4/NN.mp4`` for the first ``mp4`` videos (at
    the videos' own size, tiny ones upscaled), ``grid.gif`` (the looping grid, downscaled to at most 16 Mpx over
    its frames) and, while the videos are small (``npz``), ``videos.npz`` (uint8 ``[N, T, H, W, 3]`` + prompts, the
    ``vdistill sample`` format). The loggers get clips of the same first ``mp4`` videos (module docstring):
    TensorBoard under ``video_tag/NN`` and the grid under ``tag``.

    The student samples with its own sampler (its key timesteps or its consistency sampler, no CFG; see
    :class:`~vdistill.callbacks.periodic.PeriodicSampling` for the shared arguments), with the EMA weights when an
    :class:`~vdistill.callbacks.ema.EMA` callback is present.

    Args:
        every_n_steps: sample every this many optimizer steps.
        prompts: ``None`` (12 balanced toy captions), ``"toy"``, a prompt file or a list of prompts.
        mp4: mp4 files and logger clips of the first this many videos (0: none).
        ncols: columns of the GIF grid.
        upscale: nearest-neighbour upscaling of each GIF tile (``None``: to at least 64 px, so 4x for the toy
            world's 16 x 16 videos, 1x from 64 px up); mp4s upscale only videos under 256 px (16 x 16: 16x).
        fps: frames per second of the GIF, clips and mp4s (``None``: the model's own).
        tag: TensorBoard tag of the grid.
        video_tag: TensorBoard tag prefix of the clips (``samples/video/00``, ...) and the W&B key of the mp4s.
        npz: write ``videos.npz``: ``auto`` (while the videos hold at most 64 MiB of uint8 frames), ``always``,
            ``never``.
        num_frames, height, width: the video size in pixels (``None``: the model's own, e.g. Wan's 81 x 480 x 832,
            which a training run may want smaller); checked against the model's family when training starts.
        **kwargs: ``repeat``, ``seed``, ``steps``, ``guidance``, ``batch_size``, ``attr``, ``at_start``, ``at_end``
            of :class:`~vdistill.callbacks.periodic.PeriodicSampling`.
    """

    def __init__(self, every_n_steps: int = 250, prompts: Sequence[str] | str | None = None, mp4: int = 4,
                 ncols: int = 4, upscale: int | None = None, fps: int | None = None, tag: str = "samples/grid",
                 repeat: int = 1, seed: int = 0, steps: int | None = None, guidance: float | None = None,
                 batch_size: int = 16, attr: str | None = None, at_start: bool = False, at_end: bool = True,
                 num_frames: int | None = None, height: int | None = None, width: int | None = None,
                 video_tag: str = "samples/video", npz: str = "auto") -> None:
        super().__init__(every_n_steps, prompts, repeat, seed, steps, guidance, batch_size, attr, at_start, at_end)
        if mp4 < 0 or ncols < 1 or (upscale is not None and upscale < 1):
            raise UserError(f"VideoSamples: mp4 must be >= 0, ncols and upscale >= 1; got mp4={mp4}, ncols={ncols}, "
                            f"upscale={upscale}")
        size = {"num_frames": num_frames, "height": height, "width": width}
        bad = {k: v for k, v in size.items() if v is not None and (isinstance(v, bool) or not isinstance(v, int)
                                                                    or v < 1)}
        if bad:
            raise UserError(f"VideoSamples: num_frames, height and width must be integers >= 1 or null (the model's "
                            f"own); got {', '.join(f'{k}={v!r}' for k, v in bad.items())}")
        self.mp4, self.ncols, self.upscale, self.fps, self.tag = mp4, ncols, upscale, fps, tag
        self.video_tag, self.npz = video_tag, check_npz(npz, "VideoSamples: npz")
        self.size = size

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        video_size(backbone_of(pl_module, self.attr)[1], **self.size, what="VideoSamples: video size")

    def sample(self, trainer: L.Trainer, pl_module: L.LightningModule) -> Generated:
        """:meth:`PeriodicSampling.sample` at this callback's video size: the model's sampling defaults
        (``model.defaults``, which ``generate`` reads) carry the size for the duration of the call."""
        _, model = backbone_of(pl_module, self.attr)
        frames, height, width = video_size(model, **self.size, what="VideoSamples: video size")
        own = model.__dict__.get("defaults")
        model.defaults = replace(model.defaults, num_frames=frames, height=height, width=width)
        try:
            return super().sample(trainer, pl_module)
        finally:
            if own is None:
                del model.defaults
            else:
                model.defaults = own

    def run(self, trainer: L.Trainer, pl_module: L.LightningModule, step: int) -> None:
        gen = self.sample(trainer, pl_module)
        out = self.step_dir("samples", step)
        fps = self.fps or backbone_of(pl_module, self.attr)[1].defaults.fps
        if wants_npz(gen.videos, self.npz):
            save_npz(out / "videos.npz", gen.videos, gen.prompts)
        grid = write_gif_grid(out / "grid.gif", gen.videos, ncols=self.ncols, upscale=self.upscale, fps=fps)
        n = min(self.mp4, len(gen.prompts))
        mp4s = [write_mp4(out / "mp4" / f"{i:02d}.mp4", gen.videos[i], fps=fps) for i in range(n)]
        logged = self.to_loggers(trainer, step, out, gen, grid, mp4s, fps)
        where = f" and {', '.join(logged)}" if logged else ""
        rank_zero_info(f"step {step}: {len(gen.prompts)} sample videos in {gen.seconds:.1f} s -> {out}{where}")

    def to_loggers(self, trainer: L.Trainer, step: int, out: Path, gen: Generated, grid: Path, mp4s: list[Path],
                   fps: float) -> list[str]:
        """The grid and clips of the first ``len(mp4s)`` videos to the trainer's loggers (:func:`log_media`)."""
        if not trainer.loggers:
            return []
        clips = []
        if any(isinstance(logger, TensorBoardLogger) for logger in trainer.loggers):
            clips = [clip_summary(f"{self.video_tag}/{i:02d}", gen.videos[i], fps) for i in range(len(mp4s))]
        with Image.open(grid) as image:
            width, height = image.size
        summary = image_summary(self.tag, grid.read_bytes(), height, width)
        return log_media(trainer.loggers, step, out, summary, clips, mp4s, gen.prompts, self.video_tag)
