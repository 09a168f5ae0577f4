"""Exports of diffusers teachers carry the denoiser (and guidance projection) only; they reload exactly."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from vdistill.backbones.io import load_backbone, save_backbone
from vdistill.backbones.modelscope import ModelScopeBackbone
from vdistill.backbones.wan import WanBackbone


@pytest.mark.parametrize("family", ["modelscope", "wan"])
def test_export_roundtrip(family, modelscope_dir, wan_dir, tmp_path):
    cls, path = (ModelScopeBackbone, modelscope_dir) if family == "modelscope" else (WanBackbone, wan_dir)
    model = cls(str(path))
    proj = model.enable_guidance_embedding()
    torch.nn.init.normal_(proj.weight, std=0.1)
    with torch.no_grad():
        next(model.denoiser.parameters()).add_(0.01)  # a "trained" student differs from the folder's weights
    save_backbone(model, tmp_path / "export")
    keys = load_file(str(tmp_path / "export" / "model.safetensors")).keys()
    assert keys and all(k.startswith(("denoiser.", "guidance_proj.")) for k in keys)
    loaded = load_backbone(tmp_path / "export")
    x = torch.randn(1, *model.latent_shape(5 if family == "wan" else 2, 32, 32))
    t = model.schedule.sampling_timesteps(4)[1].reshape(1)
    text = model.encode_text(["a cat"])
    w = torch.tensor([7.0])
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, t, text, w), model(x, t, text, w))
