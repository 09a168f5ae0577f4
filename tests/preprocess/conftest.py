"""Fixtures of the latent-cache tests: a folder of tiny mp4s with a captions file (good clips, a corrupt file, a too
short one, a row with no caption) and tiny toy teachers on disk."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def videos(tmp_path_factory) -> Path:
    """``captions.csv`` and its videos (:data:`ROWS`; frame ``i`` of a video shows ``i`` in binary)."""
    from preprocess_helpers import ROWS
    from video_helpers import coded_frames, write_video

    root = tmp_path_factory.mktemp("videos")
    for name, _, frames in ROWS:
        if frames:
            write_video(root / name, coded_frames(frames))
        else:
            (root / name).write_bytes(b"\x00\x00\x00\x18ftypmp42 not a video")
    lines = ["path,caption", *(f"{name},{caption}" for name, caption, _ in ROWS)]
    (root / "captions.csv").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="session")
def toy_teachers(tmp_path_factory) -> dict[str, Path]:
    """Tiny toy teachers (4 frames of 8 x 8, fps 4) on disk: ``ddpm`` (v-prediction) and ``flow``."""
    from objective_helpers import tiny_toy

    from vdistill.backbones.io import save_backbone
    from vdistill.diffusion.schedules import DDPMSchedule

    root = tmp_path_factory.mktemp("toy_teachers")
    return {"ddpm": save_backbone(tiny_toy(DDPMSchedule(prediction_type="v_prediction")), root / "ddpm"),
            "flow": save_backbone(tiny_toy(), root / "flow")}
