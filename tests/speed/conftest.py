"""A Wan2.1 folder with a 4-block transformer (selective checkpointing needs more than one block to choose from) and
the tiny toy world of the suite as a distillation setting."""

from __future__ import annotations

from pathlib import Path

import pytest


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



@pytest.fixture(scope="session")
def toy_world(tiny_world, tmp_path_factory) -> Path:
    """``teacher/``: the tiny toy flow teacher of ``tests/modules``; ``data/``: its 8 trajectories (key points 0, 2,
    4 of 4 steps), linked."""
    root = tmp_path_factory.mktemp("speed_toy")
    (root / "teacher").symlink_to(tiny_world / "flow")
    (root / "data").symlink_to(tiny_world / "synvid")
    return root
