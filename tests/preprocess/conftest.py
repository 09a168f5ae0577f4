"""Fixtures of the latent-cache tests: a folder of tiny mp4s with a captions file (good clips, a corrupt file, a too
short one, a row with no caption), a tiny toy teacher on disk, and the tiny diffusers folders of
``tests/backbones`` and the helpers of ``tests/objectives`` / ``tests/data``, reused without copying them."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS / "objectives"))  # objective_helpers
sys.path.insert(0, str(TESTS / "data"))  # video_helpers
sys.path.insert(0, str(TESTS / "preprocess"))  # preprocess_helpers

_spec = importlib.util.spec_from_file_location("vdistill_tests_backbone_fixtures", TESTS / "backbones" / "conftest.py")
_fixtures = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_fixtures)

wan_dir = _fixtures.wan_dir
wan_pipeline_dir = _fixtures.wan_pipeline_dir

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
