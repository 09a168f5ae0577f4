"""Video samples of the student during training: a GIF grid (+ mp4s) in the run folder and in TensorBoard.

``SummaryWriter.add_video`` needs moviepy 1.x and silently writes nothing with moviepy 2, so the grid is encoded
as an animated GIF here (:func:`~vdistill.sampling.video_io.write_gif_grid`, imageio) and written as an image
summary whose ``encoded_image_string`` is the GIF: TensorBoard's Images tab shows it animated.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import replace

import lightning as L
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info
from PIL import Image

from vdistill.callbacks.periodic import PeriodicSampling, backbone_of
from vdistill.errors import UserError
from vdistill.sampling.generate import Generated, video_size
from vdistill.sampling.video_io import save_npz, write_gif_grid, write_mp4


def log_gif(trainer: L.Trainer, tag: str, gif: bytes, step: int) -> int:
    """Write the animated GIF ``gif`` as an image summary ``tag`` at ``step`` to every TensorBoard logger of the
    trainer; returns how many loggers got it."""
    from tensorboard.compat.proto.summary_pb2 import Summary

    width, height = Image.open(io.BytesIO(gif)).size
    summary = Summary(value=[Summary.Value(tag=tag, image=Summary.Image(
        height=height, width=width, colorspace=3, encoded_image_string=gif))])
    written = 0
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            writer = logger.experiment
            writer._get_file_writer().add_summary(summary, step)  # how SummaryWriter's own add_* write
            writer.flush()
            written += 1
    return written


class VideoSamples(PeriodicSampling):
    """GIF grid + mp4s of the student on fixed prompts every N steps, in the run folder and TensorBoard.

    Every ``every_n_steps`` optimizer steps (and at the end of ``fit``), sample the student on a fixed prompt set
    with fixed seeds and write ``<log_dir>/samples/step_XXXXXX/``: ``grid.gif`` (the looping grid, also in
    TensorBoard under ``tag``), ``videos.npz`` (uint8 ``[N, T, H, W, 3]`` + prompts, the ``vdistill sample``
    format) and ``mp4/NN.mp4`` for the first ``mp4`` videos.

    The student samples with its own sampler (its key timesteps or its consistency sampler, no CFG; see
    :class:`~vdistill.callbacks.periodic.PeriodicSampling` for the shared arguments), with the EMA weights when an
    :class:`~vdistill.callbacks.ema.EMA` callback is present.

    Args:
        every_n_steps: sample every this many optimizer steps.
        prompts: ``None`` (12 balanced toy captions), ``"toy"``, a prompt file or a list of prompts.
        mp4: write an mp4 for the first this many videos (0: none).
        ncols: columns of the GIF grid.
        upscale: nearest-neighbour upscaling of each GIF tile (``None``: to at least 64 px, so 4x for the toy
            world's 16 x 16 videos, 1x from 64 px up); mp4s get twice the factor.
        fps: frames per second of the GIF and mp4s (``None``: the model's own).
        tag: TensorBoard image tag.
        num_frames, height, width: the video size in pixels (``None``: the model's own, e.g. Wan's 81 x 480 x 832,
            which a training run may want smaller); checked against the model's family when training starts.
        **kwargs: ``repeat``, ``seed``, ``steps``, ``guidance``, ``batch_size``, ``attr``, ``at_start``, ``at_end``
            of :class:`~vdistill.callbacks.periodic.PeriodicSampling`.
    """

    def __init__(self, every_n_steps: int = 250, prompts: Sequence[str] | str | None = None, mp4: int = 4,
                 ncols: int = 4, upscale: int | None = None, fps: int | None = None, tag: str = "samples/grid",
                 repeat: int = 1, seed: int = 0, steps: int | None = None, guidance: float | None = None,
                 batch_size: int = 16, attr: str | None = None, at_start: bool = False, at_end: bool = True,
                 num_frames: int | None = None, height: int | None = None, width: int | None = None) -> None:
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
        save_npz(out / "videos.npz", gen.videos, gen.prompts)
        upscale = self.upscale or max(1, 64 // min(gen.videos.shape[-2:]))
        grid = write_gif_grid(out / "grid.gif", gen.videos, ncols=self.ncols, upscale=upscale, fps=fps)
        for i in range(min(self.mp4, len(gen.prompts))):
            write_mp4(out / "mp4" / f"{i:02d}.mp4", gen.videos[i], fps=fps, upscale=upscale * 2)
        logged = log_gif(trainer, self.tag, grid.read_bytes(), step)
        where = f" and {logged} TensorBoard log{'s' if logged != 1 else ''}" if logged else ""
        rank_zero_info(f"step {step}: {len(gen.prompts)} sample videos in {gen.seconds:.1f} s -> {out}{where}")
