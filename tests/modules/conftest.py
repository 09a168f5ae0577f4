"""The tiny teachers of the other test folders, reused here without copying them: the diffusers folders of
``tests/backbones`` (ModelScope, Wan) and the toy helpers of ``tests/objectives``; a tiny toy world on disk
(teachers and trajectories) for the CLI runs."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "objectives"))  # objective_helpers

_spec = importlib.util.spec_from_file_location(
    "vdistill_tests_backbone_fixtures", Path(__file__).resolve().parents[1] / "backbones" / "conftest.py")
_fixtures = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_fixtures)

modelscope_dir = _fixtures.modelscope_dir
wan_dir = _fixtures.wan_dir


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory) -> Path:
    """``flow/``: a tiny toy flow teacher; ``synvid/``: 8 of its trajectories (key points 0, 2, 4 of 4 steps, two
    shards); ``ddpm/``: a tiny v-prediction DDPM teacher."""
    import torch
    from objective_helpers import PROMPTS, tiny_toy

    from vdistill.backbones.io import save_backbone
    from vdistill.diffusion.schedules import DDPMSchedule
    from vdistill.synth import synthesize

    root = tmp_path_factory.mktemp("tiny_world")
    flow = tiny_toy()
    save_backbone(flow, root / "flow")
    save_backbone(tiny_toy(DDPMSchedule(prediction_type="v_prediction")), root / "ddpm")
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # session fixtures run before the suite's one-thread fixture
    try:
        synthesize(flow, (PROMPTS * 3)[:8], root / "synvid", key_indices=(0, 2, 4), steps=4, dtype="float32",
                   shard_size=4, batch_size=4, progress=False)
    finally:
        torch.set_num_threads(before)
    return root
