"""Registry, frame selection, preprocessing (against torchvision / open_clip) and the strict loader."""

from __future__ import annotations

import argparse

import pytest
import torch
import torchvision.transforms.functional as TF
from open_clip.transform import center_crop_or_pad
from torch import nn
from torchvision.transforms import InterpolationMode

from vdistill.critics import CRITICS, Critic, available_critics, load_critic, register_critic
from vdistill.critics.base import random_frame_indices, strided_frame_indices
from vdistill.critics.checkpoint import MAX_LISTED_KEYS, load_strict, read_checkpoint
from vdistill.critics.preprocess import normalize, resize_longest_and_pad, resize_shortest_and_center_crop
from vdistill.errors import UserError


# ---- registry ---------------------------------------------------------------------------------------------
def test_official_critics_registered():
    assert {"hpsv2", "pickscore", "viclip", "internvideo2"} <= set(available_critics())


def test_unknown_name_lists_valid_names():
    with pytest.raises(UserError, match=r"unknown critic 'clipscore'; valid names: .*hpsv2.*internvideo2"):
        load_critic("clipscore")


def test_unknown_option_is_user_error():
    with pytest.raises(UserError, match=r"critic 'viclip' got unknown options \['frames'\]; valid options: size"):
        load_critic("viclip", size="tiny", frames=8)


def test_missing_checkpoint_names_the_path(tmp_path):
    missing = tmp_path / "nowhere" / "HPS_v2.1_compressed.pt"
    with pytest.raises(UserError, match=f"HPSv2 checkpoint not found: '{missing}'"):
        load_critic("hpsv2", checkpoint=missing, size="tiny")


def test_register_critic_extends_load_critic():
    class Const(Critic):
        name, kind = "const", "video"

        def __init__(self):
            super().__init__(num_frames=2)
            self.w = nn.Parameter(torch.ones(3))

        def _encode(self, pixels):
            return pixels.mean(dim=(1, 3, 4)) * self.w

        def _encode_text(self, prompts):
            return torch.ones(len(prompts), 3)

    @register_critic("toy-const")
    def build(checkpoint=None):
        return Const()

    try:
        c = load_critic("toy-const")
        assert not c.w.requires_grad and c.frames == 2
        assert c(torch.rand(2, 5, 3, 4, 4), ["a", "b"]).shape == (2,)
        with pytest.raises(ValueError, match="already registered"):
            register_critic("toy-const")(lambda checkpoint=None: Const())
    finally:
        CRITICS.pop("toy-const")


# ---- frame selection --------------------------------------------------------------------------------------
def test_strided_indices_even_stride_random_offset():
    torch.manual_seed(0)
    idx = strided_frame_indices(200, total=16, n=8)
    assert ((idx[:, 1:] - idx[:, :-1]) == 2).all()
    assert set(idx[:, 0].tolist()) == {0, 1}  # 16 frames, 8 at stride 2: offsets 0 or 1
    assert set(strided_frame_indices(200, total=17, n=4)[:, 0].tolist()) == set(range(5))  # stride 4, span 13


def test_strided_indices_deterministic_when_t_equals_or_below_n():
    assert strided_frame_indices(3, total=8, n=8).tolist() == [list(range(8))] * 3
    assert strided_frame_indices(1, total=2, n=4).tolist() == [[0, 0, 1, 1]]
    assert strided_frame_indices(1, total=1, n=3).tolist() == [[0, 0, 0]]


def test_random_indices_distinct_sorted_per_video():
    torch.manual_seed(0)
    idx = random_frame_indices(100, total=16, n=5)
    assert idx.shape == (100, 5) and (idx[:, 1:] > idx[:, :-1]).all() and idx.max() < 16
    assert len({tuple(r) for r in idx.tolist()}) > 50  # videos draw independently
    assert random_frame_indices(2, total=3, n=5).tolist() == [[0, 1, 2]] * 2


# ---- preprocessing ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("hw", [(40, 64), (64, 40), (100, 100), (12, 20)])
def test_longest_side_and_pad_matches_open_clip_hpsv2_transform(hw):
    x = torch.rand(2, 3, *hw)
    scale = 28 / max(hw)
    ref = TF.resize(x, [round(hw[0] * scale), round(hw[1] * scale)], InterpolationMode.BICUBIC, antialias=True)
    ref = center_crop_or_pad(ref, [28, 28], fill=0)
    torch.testing.assert_close(resize_longest_and_pad(x, 28), ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("hw", [(40, 64), (64, 41), (100, 100), (12, 20)])
def test_shortest_side_and_centre_crop_matches_torchvision(hw):
    x = torch.rand(2, 3, *hw)
    ref = TF.center_crop(TF.resize(x, 28, InterpolationMode.BICUBIC, antialias=True), [28, 28])
    torch.testing.assert_close(resize_shortest_and_center_crop(x, 28), ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("resize", [resize_longest_and_pad, resize_shortest_and_center_crop])
def test_preprocessing_is_differentiable(resize):
    # reward feedback backpropagates through it: the analytic gradient matches finite differences
    x = torch.rand(1, 3, 10, 14, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: normalize(resize(v, 8), (0.5,) * 3, (0.25,) * 3), (x,))


def test_bf16_frames_are_resized_in_float32():
    # a bf16 critic's frames: torch has no bicubic antialiased bf16 kernel on the CPU
    x = torch.rand(2, 3, 40, 64)
    out = resize_shortest_and_center_crop(x.bfloat16(), 28)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, resize_shortest_and_center_crop(x.bfloat16().float(), 28).bfloat16())


# ---- strict loading ---------------------------------------------------------------------------------------
def test_load_strict_counts_and_truncates_long_lists():
    model = nn.Sequential(*[nn.Linear(2, 2) for _ in range(30)])
    with pytest.raises(UserError) as err:
        load_strict(model, {"extra": torch.zeros(1)}, "test")
    msg = str(err.value)
    assert "missing keys (60) [" in msg and f"({60 - MAX_LISTED_KEYS} more)" in msg
    assert "unexpected keys (1) [extra]" in msg


def test_load_strict_reports_shapes_and_drops_ignored():
    model = nn.Linear(2, 3)
    sd = {"weight": torch.zeros(3, 2), "bias": torch.zeros(4), "head.x": torch.zeros(1)}
    with pytest.raises(UserError, match=r"shape mismatches \(1\) \[bias: file \(4,\) vs model \(3,\)\]"):
        load_strict(model, sd, "test", ignore=("head.",))
    sd["bias"] = torch.ones(3)
    assert load_strict(model, sd, "test", ignore=("head.",)) == ["head.x"]
    torch.testing.assert_close(model.bias, torch.ones(3), check_device=False)


def test_non_tensor_pickles_need_trust(tmp_path):
    path = tmp_path / "ckpt.pth"
    torch.save({"model": {"w": torch.zeros(1)}, "args": argparse.Namespace(lr=1.0)}, path)
    with pytest.raises(UserError, match="trust_checkpoint=True"):
        read_checkpoint(path, "model", "ViCLIP")
    assert set(read_checkpoint(path, "model", "ViCLIP", trust_checkpoint=True)) == {"w"}
