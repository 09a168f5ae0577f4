"""Training on a latent cache: a consistency-distillation step on cached clips equals the step on the same clips
encoded on the fly (and runs neither encoder), ``vdistill fit`` trains consistency distillation + a reward critic
on ``LatentClips``, a cache of another teacher is refused in one line."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import yaml
from torch.utils.data import DataLoader

from vdistill.backbones.io import load_backbone
from vdistill.backbones.student import StudentConfig
from vdistill.backbones.toy import ToyBackbone
from vdistill.commands.preprocess import run
from vdistill.data.decode import ClipSpec
from vdistill.data.latent_clips import CollateClips, LatentClips
from vdistill.data.videos import VideoClipDataset
from vdistill.errors import UserError
from vdistill.modules.distill import Distillation
from vdistill.objectives import ConsistencyDistillation

pytestmark = pytest.mark.filterwarnings("ignore:critic 'img' has no checkpoint")

#: (frames, height, width, fps) of each family's clips
SIZES = {"toy": (4, 8, 8, 4.0), "wan": (5, 32, 32, 12.0)}


def encode(teacher: str, videos: Path, out: Path, size: tuple, dtype: str = "float32", *extra: str) -> Path:
    frames, height, width, fps = size
    run(["--model", teacher, "--videos", str(videos / "captions.csv"), "--out", str(out), "--frames", str(frames),
         "--height", str(height), "--width", str(width), "--fps", str(fps), "--dtype", dtype, "--shard-size", "3",
         "--workers", "0", "--quiet", *extra])
    return out


def forbid_encoders(monkeypatch, model) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("a fit on a latent cache ran an encoder")

    monkeypatch.setattr(model, "encode_video", refuse)
    monkeypatch.setattr(model, "encode_text", refuse)


@pytest.mark.parametrize("family", ["toy", "wan"])
def test_a_step_on_the_cache_equals_the_step_on_the_fly(family, toy_teachers, request, videos, tmp_path,
                                                        monkeypatch):
    """Same student, same random draws: the consistency loss and every gradient of a step on cached clips equal the
    step on the same clips (VideoClips' epoch-0 pixels) encoded by the teacher on the fly, bit for bit (the Wan
    gradients: to 1e-3 of their largest entry, see below).

    The cache is encoded in batches of the clips at positions 0..3, of which 0, 1 and 3 are readable: the very
    batch the step sees, so the encoders' outputs do not differ by the float rounding of another batch size."""
    teacher = str(toy_teachers["ddpm"] if family == "toy" else request.getfixturevalue("wan_pipeline_dir"))
    root = encode(teacher, videos, tmp_path / "cache", SIZES[family], "float32", "--shard-size", "8",
                  "--batch-size", "4")
    model = Distillation(load_backbone(teacher), [ConsistencyDistillation(w_min=1.0, w_max=3.0, guidance=2.0)],
                         student=StudentConfig(guidance_embedding=True))
    data = LatentClips(str(root), batch_size=3, num_workers=0, shuffle=False)
    model.check_data(data)
    cached = next(iter(DataLoader(data.build(), batch_size=3, collate_fn=CollateClips(data.dataset.uncond))))
    frames, height, width, fps = SIZES[family]
    clips = VideoClipDataset(videos / "captions.csv", None, ClipSpec(frames, height, width, fps), seed=0)
    pixels = [clips[(0, int(i))] for i in cached["index"]]
    on_the_fly = {"videos": torch.stack([v for v, _ in pixels]), "prompts": [c for _, c in pixels]}
    assert on_the_fly["prompts"] == cached["prompts"] and cached["index"].tolist() == [0, 1, 3]
    trained = [p for p in model.student.parameters() if p.requires_grad]

    def step(batch: dict) -> tuple[torch.Tensor, list[torch.Tensor]]:
        for p in trained:
            p.grad = None
        torch.manual_seed(0)
        loss = model.objectives[0](batch, model.models())["cd"]
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in trained]

    want, want_grads = step(on_the_fly)
    forbid_encoders(monkeypatch, model.teacher)
    got, got_grads = step(cached)
    assert want > 0 and torch.equal(got, want)
    if family == "toy":
        assert all(torch.equal(a, b) for a, b in zip(got_grads, want_grads))
    else:  # bit for bit when written; with diffusers 0.42.1 / transformers 5.25 the Wan gradients differ by up to 2e-4
        # of their largest entry while the loss stays bit-identical (cause not found): same step, other rounding
        for a, b in zip(got_grads, want_grads):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-3 * float(b.abs().max()))


def test_vdistill_fit_trains_consistency_and_rewards_on_the_cache(toy_teachers, videos, tmp_path, monkeypatch):
    """Two steps of T2V-Turbo's mix (consistency distillation + a reward critic decoding the student's latents)
    through ``vdistill fit`` on ``LatentClips``, with the teacher's encoders refusing to run."""
    from vdistill.cli import main

    root = encode(str(toy_teachers["ddpm"]), videos, tmp_path / "cache", SIZES["toy"], dtype="bfloat16")
    config = {"seed_everything": 0, "model": {"class_path": "Distillation", "init_args": {
        "teacher": str(toy_teachers["ddpm"]), "student": {"guidance_embedding": True},
        "objectives": [{"class_path": "ConsistencyDistillation",
                        "init_args": {"w_min": 1.0, "w_max": 3.0, "guidance": 2.0}},
                       {"class_path": "RewardFeedback", "init_args": {"critics": {"img": 0.5}}}],
        "critics": {"img": {"critic": "toy-image", "checkpoint": None, "size": "tiny", "num_frames": 2}},
        "lr": 1e-3}},
        "data": {"class_path": "vdistill.data.latent_clips.LatentClips",
                 "init_args": {"root": str(root), "batch_size": 2, "num_workers": 1}},
        "trainer": {"accelerator": "cpu", "devices": 1, "max_steps": 2, "logger": False,
                    "enable_progress_bar": False, "enable_model_summary": False,
                    "default_root_dir": str(tmp_path / "run")}}
    (tmp_path / "fit.yaml").write_text(yaml.safe_dump(config))
    forbid_encoders(monkeypatch, ToyBackbone)  # the cache replaces both: any call fails the fit
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["vdistill"])  # main(args) runs as if typed, not with pytest's arguments
    main(["fit", "--config", str(tmp_path / "fit.yaml")])
    ckpt = next((tmp_path / "run").rglob("*.ckpt"))
    saved = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert saved["global_step"] == 2
    teacher = load_backbone(toy_teachers["ddpm"]).state_dict()
    student = {k.removeprefix("student."): v for k, v in saved["state_dict"].items() if k.startswith("student.")}
    assert student["guidance_proj.weight"].abs().sum() > 0  # zero-initialised, trained
    assert any(not torch.equal(v, teacher[k]) for k, v in student.items() if k.startswith("denoiser."))


def test_a_cache_of_another_teacher_is_refused_in_one_line(toy_teachers, videos, tmp_path):
    root = encode(str(toy_teachers["ddpm"]), videos, tmp_path / "cache", SIZES["toy"])
    model = Distillation(str(toy_teachers["flow"]), [ConsistencyDistillation()])
    with pytest.raises(UserError) as err:
        model.check_data(LatentClips(str(root), num_workers=0))
    message = str(err.value)
    assert "was encoded for a teacher that does not match this one" in message and len(message.splitlines()) == 1
    assert 'schedule.kind: "ddpm" (cache) != "flow" (this teacher)' in message
