"""The tiny teachers of the other test folders, reused without copying them: the diffusers folders of
``tests/backbones`` (ModelScope, Wan, HunyuanVideo), the toy helpers of ``tests/objectives``, and a Wan2.1 folder
with a 4-block transformer (selective checkpointing needs more than one block to choose from)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "objectives"))  # objective_helpers
sys.path.insert(0, str(Path(__file__).resolve().parent))  # speed_helpers

_spec = importlib.util.spec_from_file_location(
    "vdistill_tests_speed_backbone_fixtures", Path(__file__).resolve().parents[1] / "backbones" / "conftest.py")
_fixtures = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_fixtures)

modelscope_dir = _fixtures.modelscope_dir
wan_dir = _fixtures.wan_dir
hunyuan_pipeline_dir = _fixtures.hunyuan_pipeline_dir


@pytest.fixture(scope="session")
def wan4_dir(wan_dir, tmp_path_factory) -> Path:
    """The tiny Wan2.1 of ``wan_dir`` with a 4-block transformer (its VAE, text encoder and tokenizer linked)."""
    import torch
    from diffusers import WanTransformer3DModel

    root = tmp_path_factory.mktemp("wan4")
    for part in wan_dir.iterdir():
        if part.name != "transformer":
            (root / part.name).symlink_to(part)
    config = dict(WanTransformer3DModel.load_config(wan_dir / "transformer"), num_layers=4)
    torch.manual_seed(0)
    WanTransformer3DModel.from_config(config).save_pretrained(root / "transformer")
    return root


_modules_spec = importlib.util.spec_from_file_location(
    "vdistill_tests_speed_module_fixtures", Path(__file__).resolve().parents[1] / "modules" / "conftest.py")
_module_fixtures = importlib.util.module_from_spec(_modules_spec)
_modules_spec.loader.exec_module(_module_fixtures)

tiny_world = _module_fixtures.tiny_world


@pytest.fixture(scope="session")
def toy_world(tiny_world, tmp_path_factory) -> Path:
    """``teacher/``: the tiny toy flow teacher of ``tests/modules``; ``data/``: its 8 trajectories (key points 0, 2,
    4 of 4 steps), linked."""
    root = tmp_path_factory.mktemp("speed_toy")
    (root / "teacher").symlink_to(tiny_world / "flow")
    (root / "data").symlink_to(tiny_world / "synvid")
    return root
