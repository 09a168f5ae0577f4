"""Suite-wide fixtures: one thread per test, and the tiny models every folder shares (built once per session):
the official diffusers folders of ModelScope, Wan and HunyuanVideo (``helpers/diffusers_folders.py``), a tiny toy
world on disk (``tiny_world``) and a tiny distillation setting (``toy``). The shared helper modules live in
``tests/helpers/`` and import by name (``from objective_helpers import tiny_toy``)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent / "helpers"))

from diffusers_folders import (  # noqa: E402,F401  (session fixtures, shared by every folder)
    hunyuan_pipeline_dir,
    modelscope_dir,
    modelscope_pipeline_dir,
    wan_dir,
    wan_pipeline_dir,
)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models gain nothing from threads, and OpenMP threads on a busy shared CPU slow them ~10x."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory) -> Path:
    """``flow/``: a tiny toy flow teacher; ``synvid/``: 8 of its trajectories (key points 0, 2, 4 of 4 steps, two
    shards); ``ddpm/``: a tiny v-prediction DDPM teacher."""
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


@pytest.fixture(scope="session")
def toy(tmp_path_factory) -> Path:
    """A tiny toy flow teacher exported to ``teacher/``, its key points in ``data/`` and held-out ones (other noise)
    in ``val/``: the distillation setting of ``tests/modules`` and ``tests/callbacks``."""
    from objective_helpers import synth_keys, tiny_toy

    from vdistill.backbones.io import save_backbone

    root = tmp_path_factory.mktemp("toy")
    teacher = tiny_toy()
    save_backbone(teacher, root / "teacher")
    synth_keys(teacher, root / "data")
    synth_keys(teacher, root / "val", seed=100)
    return root
