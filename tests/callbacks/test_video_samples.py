"""VideoSamples: files per step, the animated GIF read back from the TensorBoard event file, the student's own
sampler and seeds, and a training run left exactly as it would be without it."""

from __future__ import annotations

import io

import imageio.v3 as iio
import lightning as L
import numpy as np
import pytest
import torch
from callback_helpers import PROMPTS, distillation, fit
from lightning.pytorch.loggers import TensorBoardLogger
from objective_helpers import tiny_toy

from vdistill.backbones.io import save_backbone
from vdistill.backbones.student import StudentConfig, consistency_sampling
from vdistill.callbacks import EMA, VideoSamples
from vdistill.callbacks.periodic import SMALL_TOY_PROMPTS, resolve_prompts
from vdistill.callbacks.target import backbone_of
from vdistill.data.toy import ToyVideos
from vdistill.diffusion.schedules import DDPMSchedule
from vdistill.errors import UserError
from vdistill.modules.distill import Distillation
from vdistill.objectives import ConsistencyDistillation
from vdistill.sampling.generate import generate
from vdistill.sampling.video_io import load_npz, to_uint8
from vdistill.world.captions import parse_caption


def test_samples_reach_the_run_folder_and_tensorboard(toy, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import IMAGES, EventAccumulator

    logger = TensorBoardLogger(str(tmp_path), name="tb")
    samples = VideoSamples(every_n_steps=2, prompts=PROMPTS, mp4=1, seed=5)
    L.seed_everything(0)
    model = distillation(toy)
    fit(model, toy, tmp_path, [samples], max_steps=3, logger=logger)

    run = tmp_path / "tb" / "version_0"
    assert sorted(p.name for p in (run / "samples").iterdir()) == ["step_000002", "step_000003"]  # every 2 + end
    last = run / "samples" / "step_000003"
    assert (last / "grid.gif").is_file() and (last / "mp4" / "00.mp4").is_file()
    videos, prompts = load_npz(last / "videos.npz")
    assert prompts == PROMPTS and videos.shape == (2, 4, 3, 8, 8)

    # the student's own sampler (its 2 key-timestep steps, no CFG), prompt i seeded 5 + i, eval mode
    student = model.student.eval()
    assert student.defaults.steps == 2 and student.defaults.cfg == 1.0
    again = generate(student, PROMPTS, seed=5, progress=False).videos
    assert np.array_equal(to_uint8(again), to_uint8(videos))

    acc = EventAccumulator(str(run), size_guidance={IMAGES: 0})
    acc.Reload()
    assert "samples/grid" in acc.Tags()["images"]
    events = acc.Images("samples/grid")
    assert [e.step for e in events] == [2, 3]
    gif = events[-1].encoded_image_string
    assert gif[:6] in (b"GIF87a", b"GIF89a") and gif == (last / "grid.gif").read_bytes()
    frames = iio.imread(io.BytesIO(gif), index=None, extension=".gif")
    moving = 1 + int(np.any(np.diff(to_uint8(videos).astype(int), axis=1) != 0, axis=(0, 2, 3, 4)).sum())
    assert frames.shape[0] == moving == 4  # Pillow merges identical frames: these 4 differ
    assert (events[-1].width, events[-1].height) == (frames.shape[2], frames.shape[1])


def test_sampling_leaves_training_unchanged(toy, tmp_path):
    def run(callbacks):
        L.seed_everything(0)
        model = distillation(toy)
        fit(model, toy, tmp_path, callbacks, max_steps=2)
        return model

    plain = run([])
    sampled = run([VideoSamples(every_n_steps=1, prompts=PROMPTS[:1], mp4=0, at_start=True)])
    assert (tmp_path / "samples" / "step_000000" / "grid.gif").is_file()  # no logger: the root folder
    for a, b in zip(plain.student.parameters(), sampled.student.parameters()):
        assert torch.equal(a, b)
    assert all(m.training == n.training for m, n in zip(plain.modules(), sampled.modules()))


def test_consistency_lora_student_with_ema(tmp_path):
    teacher = save_backbone(tiny_toy(DDPMSchedule(prediction_type="v_prediction")), tmp_path / "teacher")
    model = Distillation(str(teacher), [ConsistencyDistillation(w_min=1.0, w_max=3.0, guidance=2.0)], lr=1e-2,
                         student=StudentConfig(mode="lora", lora_rank=4, guidance_embedding=True))
    ema = EMA(decay=0.5)
    trainer = L.Trainer(max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(tmp_path),
                        callbacks=[ema, VideoSamples(prompts=PROMPTS, mp4=0)])
    trainer.fit(model, datamodule=ToyVideos(batch_size=2, num_frames=4, size=8))
    videos, _ = load_npz(tmp_path / "samples" / "step_000002" / "videos.npz")
    student = model.student.eval()
    assert consistency_sampling(student) is not None
    assert all("lora_" in n or n.startswith("guidance_proj.") for n in ema.averaged())  # adapters + w-projection
    with ema.averaged_weights(model):  # the multistep consistency sampler, embedded guidance 2, EMA adapters
        again = generate(student, PROMPTS, progress=False).videos
    assert np.array_equal(to_uint8(again), to_uint8(videos))
    online = generate(student, PROMPTS, progress=False).videos
    assert not np.array_equal(to_uint8(online), to_uint8(videos))


def test_prompts_and_user_errors(tmp_path):
    assert len(SMALL_TOY_PROMPTS) == len(set(SMALL_TOY_PROMPTS)) == 12
    captions = [parse_caption(p) for p in SMALL_TOY_PROMPTS]
    for attribute, times in (("colour", 3), ("shape", 4), ("motion", 3)):
        counts = {}
        for c in captions:
            counts[getattr(c, attribute)] = counts.get(getattr(c, attribute), 0) + 1
        assert set(counts.values()) == {times}
    assert len(resolve_prompts("toy")) == 48 and resolve_prompts(["a", "b"], repeat=2) == ["a", "a", "b", "b"]
    with pytest.raises(UserError, match="prompt file 'nope.txt' does not exist"):
        VideoSamples(prompts="nope.txt")
    with pytest.raises(UserError, match="every_n_steps must be >= 1, got 0"):
        VideoSamples(every_n_steps=0)
    module = L.LightningModule()
    with pytest.raises(UserError, match="no backbone attribute 'student' or 'backbone'; valid choices: none"):
        backbone_of(module)
