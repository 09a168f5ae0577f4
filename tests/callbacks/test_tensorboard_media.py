"""What the loggers get: TensorBoard clips (``add_video``'s summary) and the grid read back from the event file,
learning-rate curves per parameter group from ``callbacks/lr_monitor.yaml``, the mp4s for a logger with
``log_video`` (W&B), the sample folder for MLflow, and nothing (but no error) for the others."""

from __future__ import annotations

import io
from pathlib import Path

import imageio.v3 as iio
import lightning as L
import numpy as np
import pytest
import torch
from callback_helpers import PROMPTS, MemoryLogger, distillation, fit
from lightning.pytorch.loggers import CSVLogger, MLFlowLogger
from tensorboard.backend.event_processing.event_accumulator import IMAGES, SCALARS, EventAccumulator

from vdistill.callbacks import VideoSamples
from vdistill.callbacks.video_samples import clip_summary, log_media
from vdistill.cli import main
from vdistill.sampling.video_io import load_npz, to_uint8, upscale_nearest

ROOT = Path(__file__).resolve().parents[2]


def gif_frames(data: bytes) -> np.ndarray:
    return iio.imread(io.BytesIO(data), index=None, extension=".gif")[..., :3]


def merged(frames: np.ndarray) -> np.ndarray:
    """``frames`` without repeats of the frame before (Pillow merges identical consecutive GIF frames)."""
    keep = [0] + [t for t in range(1, len(frames)) if not np.array_equal(frames[t], frames[t - 1])]
    return frames[keep]


def test_lr_curves_and_clips_reach_tensorboard(toy, tmp_path, monkeypatch):
    """A 3-step fit of the AccVideo recipe with lr_monitor.yaml and video_samples.yaml, read back from TensorBoard:
    one learning-rate curve per parameter group, the warm-up's values at each step, and the clips and grid."""
    monkeypatch.chdir(tmp_path)
    main(["fit", "--config", str(ROOT / "experiments/toy/accvideo/accvideo.yaml"),
          "--config", str(ROOT / "callbacks/lr_monitor.yaml"), "--config", str(ROOT / "callbacks/video_samples.yaml"),
          f"--model.init_args.teacher={toy / 'teacher'}", f"--data.init_args.root={toy / 'data'}",
          "--data.init_args.batch_size=2", "--model.init_args.lr=2e-4", "--model.init_args.disc_lr=1e-4",
          "--model.init_args.warmup_steps=50", "--trainer.max_steps=3", "--trainer.log_every_n_steps=1",
          "--trainer.enable_progress_bar=false"])
    log_dir = tmp_path / "runs/toy/accvideo/m2_traj_adv/lightning_logs/version_0"
    acc = EventAccumulator(str(log_dir), size_guidance={IMAGES: 0, SCALARS: 0})
    acc.Reload()

    # LambdaLR warm-up of Distillation: lr * min(1, (step + 1) / warmup_steps), logged before each step's update
    for group, lr in (("student", 2e-4), ("discriminator", 1e-4)):
        events = acc.Scalars(f"lr-AdamW/{group}")
        assert [e.step for e in events] == [0, 1, 2]
        np.testing.assert_allclose([e.value for e in events], [lr * (s + 1) / 50 for s in range(3)], rtol=1e-6)
    assert not [t for t in acc.Tags()["scalars"] if t.startswith("lr-") and "/" not in t]  # no unnamed group

    videos, prompts = load_npz(log_dir / "samples/step_000003/videos.npz")
    assert len(prompts) == 12  # the fragment's 12 toy captions; mp4: 4 -> 4 clips
    clips = sorted(t for t in acc.Tags()["images"] if t.startswith("samples/video/"))
    assert clips == [f"samples/video/{i:02d}" for i in range(4)]
    frames = to_uint8(videos)
    up = 64 // min(frames.shape[2:4])  # tiny toys: tiles of at least 64 px
    for i, tag in enumerate(clips):
        (event,) = acc.Images(tag)
        assert event.step == 3
        got = gif_frames(event.encoded_image_string)
        want = merged(upscale_nearest(frames[i], up))
        assert (event.height, event.width) == want.shape[1:3]
        np.testing.assert_array_equal(got, want)  # few colours: the GIF keeps them exactly
    (grid,) = acc.Images("samples/grid")
    assert grid.step == 3 and grid.encoded_image_string == (log_dir / "samples/step_000003/grid.gif").read_bytes()


def test_clip_summary_is_what_add_video_writes(monkeypatch):
    """Against ``torch.utils.tensorboard.summary.video`` (``SummaryWriter.add_video``): the same tag, size and
    colour space, and GIF frames equal to the uint8 frames it would encode (within 1: it truncates, we round)."""
    from torch.utils.tensorboard import summary as tb_summary

    captured = {}

    def make_video(tensor, fps):  # add_video's moviepy step, recording what it was asked to encode
        captured["frames"], captured["fps"] = tensor, fps
        return tb_summary.Summary.Image(height=tensor.shape[1], width=tensor.shape[2], colorspace=tensor.shape[3])

    monkeypatch.setattr(tb_summary, "make_video", make_video)
    levels = torch.randint(0, 4, (5, 3, 64, 96), generator=torch.Generator().manual_seed(0))
    video = levels.float() / 3  # 64 colours
    ref = tb_summary.video("samples/video/00", video[None], fps=8).value[0]
    ours = clip_summary("samples/video/00", video, fps=8).value[0]
    assert ours.tag == ref.tag
    assert (ours.image.height, ours.image.width, ours.image.colorspace) == (ref.image.height, ref.image.width,
                                                                             ref.image.colorspace) == (64, 96, 3)
    got = gif_frames(ours.image.encoded_image_string).astype(int)
    assert got.shape == captured["frames"].shape
    assert np.abs(got - captured["frames"].astype(int)).max() <= 1


def test_large_clips_are_downscaled_for_tensorboard():
    video = torch.rand(9, 3, 480, 832, generator=torch.Generator().manual_seed(0))
    image = clip_summary("v", video, fps=16, max_pixels=2**20).value[0].image
    # 9 x 480 x 832 = 3.6 Mpx; box-downscaled 2x: 9 x 240 x 416 = 0.9 Mpx <= 1 Mpx
    assert (image.height, image.width) == (240, 416)
    assert gif_frames(image.encoded_image_string).shape == (9, 240, 416, 3)


class VideoLogger(MemoryLogger):
    """A logger with Lightning's ``WandbLogger.log_video(key, videos, step, **kwargs)``."""

    def __init__(self) -> None:
        super().__init__()
        self.videos: list[tuple] = []

    def log_video(self, key: str, videos: list, step: int | None = None, **kwargs) -> None:
        self.videos.append((key, videos, step, kwargs))


class FakeMLflow(MLFlowLogger):
    """An MLFlowLogger whose client records ``log_artifacts`` (mlflow itself is not installed here)."""

    def __init__(self) -> None:  # noqa: D107 - MLFlowLogger's own needs the mlflow package
        L.pytorch.loggers.Logger.__init__(self)
        self.calls: list[tuple] = []

    @property
    def experiment(self):
        return self

    @property
    def run_id(self) -> str:
        return "run0"

    def log_artifacts(self, run_id: str, local_dir: str, artifact_path: str | None = None) -> None:
        self.calls.append((run_id, local_dir, artifact_path, sorted(p.name for p in Path(local_dir).iterdir())))


def test_other_loggers_get_what_they_support(toy, tmp_path):
    wandb, csv = VideoLogger(), CSVLogger(str(tmp_path), name="csv")
    L.seed_everything(0)
    fit(distillation(toy), toy, tmp_path, [VideoSamples(every_n_steps=2, prompts=PROMPTS, mp4=2)], max_steps=2,
        logger=[csv, wandb])
    ((key, videos, step, kwargs),) = wandb.videos
    assert key == "samples/video" and step == 2 and kwargs == {"caption": PROMPTS}
    assert [Path(v).name for v in videos] == ["00.mp4", "01.mp4"] and all(Path(v).is_file() for v in videos)
    assert Path(videos[0]).parent.parent == tmp_path / "csv" / "version_0" / "samples" / "step_000002"

    mlflow, folder = FakeMLflow(), Path(videos[0]).parent.parent
    got = log_media([mlflow, csv], 2, folder, grid=None, clips=[], mp4s=[], prompts=PROMPTS,
                    video_tag="samples/video")
    assert got == ["MLflow"]  # the CSV logger gets nothing
    assert mlflow.calls == [("run0", str(folder), "samples/step_000002", ["grid.gif", "mp4", "videos.npz"])]


@pytest.mark.parametrize("npz, written", [("auto", True), ("never", False)])
def test_video_samples_npz(npz, written, toy, tmp_path):
    L.seed_everything(0)
    fit(distillation(toy), toy, tmp_path, [VideoSamples(prompts=PROMPTS[:1], mp4=0, npz=npz)], max_steps=1)
    assert (tmp_path / "samples/step_000001/videos.npz").is_file() == written
    assert (tmp_path / "samples/step_000001/grid.gif").is_file()
