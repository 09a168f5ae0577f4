"""Sample outputs: npz round trips exactly, mp4 and GIF grids read back with the right frames and sizes."""

from __future__ import annotations

from pathlib import Path

import imageio.v2 as imageio_v2
import imageio.v3 as imageio_v3
import numpy as np
import pytest
import torch

from vdistill.errors import UserError
from vdistill.sampling.video_io import load_npz, save_npz, to_uint8, write_gif_grid, write_mp4
from vdistill.world import all_captions, render_batch


@pytest.fixture(scope="module")
def videos() -> torch.Tensor:
    return render_batch(all_captions()[:5], seed=0)  # [5, 8, 3, 16, 16]


def test_npz_round_trip(tmp_path: Path, videos: torch.Tensor) -> None:
    noisy = (videos + 0.1 * torch.rand(videos.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    prompts = [c.text for c in all_captions()[:5]]
    path = save_npz(tmp_path / "out" / "samples.npz", noisy, prompts)
    loaded, loaded_prompts = load_npz(path)
    assert loaded_prompts == prompts and loaded.shape == noisy.shape and loaded.dtype == torch.float32
    assert (loaded - noisy).abs().max() <= 0.5 / 255 + 1e-6  # rounding to uint8 only
    np.testing.assert_array_equal(to_uint8(loaded), to_uint8(noisy))  # uint8 survives exactly
    with np.load(path, allow_pickle=False) as data:
        assert data["videos"].dtype == np.uint8 and data["videos"].shape == (5, 8, 16, 16, 3)


def test_npz_errors(tmp_path: Path, videos: torch.Tensor) -> None:
    with pytest.raises(UserError, match="no video file"):
        load_npz(tmp_path / "missing.npz")
    np.savez(tmp_path / "other.npz", frames=np.zeros(3))
    with pytest.raises(UserError, match="lacks arrays"):
        load_npz(tmp_path / "other.npz")
    (tmp_path / "junk.npz").write_text("not a zip")
    with pytest.raises(UserError, match="not a readable"):
        load_npz(tmp_path / "junk.npz")
    np.savez(tmp_path / "bad.npz", videos=np.zeros((2, 8, 16, 16, 3), np.float32), prompts=np.array(["a", "b"]))
    with pytest.raises(UserError, match="uint8"):
        load_npz(tmp_path / "bad.npz")
    with pytest.raises(UserError, match="5 videos but 1 prompts"):
        save_npz(tmp_path / "x.npz", videos, ["a"])


def test_mp4_reads_back(tmp_path: Path, videos: torch.Tensor) -> None:
    path = write_mp4(tmp_path / "clip.mp4", videos[0], fps=8, upscale=8)
    assert path.stat().st_size > 0
    frames = imageio_v2.mimread(path, format="FFMPEG")
    assert len(frames) == 8 and frames[0].shape == (128, 128, 3)
    # Nearest upscaling keeps the object's colour through the codec (red object, black background).
    first = to_uint8(videos[0])[0].repeat(8, 0).repeat(8, 1).astype(int)
    assert np.abs(frames[0].astype(int) - first).mean() < 8


def test_mp4_pads_odd_sizes_to_even(tmp_path: Path) -> None:
    # 27 x 30 after 3x: one black row makes it even for yuv420p; no padding to multiples of 16, no resizing
    frames = imageio_v2.mimread(write_mp4(tmp_path / "odd.mp4", torch.rand(3, 3, 9, 10), upscale=3), format="FFMPEG")
    assert len(frames) == 3 and frames[0].shape == (28, 30, 3)


def test_gif_grid_reads_back(tmp_path: Path, videos: torch.Tensor) -> None:
    path = write_gif_grid(tmp_path / "grid.gif", videos, ncols=3, upscale=4, fps=8)
    assert path.stat().st_size > 0
    frames = imageio_v3.imread(path, index=None)
    # 2 rows x 3 columns of 64-px tiles with 1-px lines between them.
    assert frames.shape[:3] == (8, 2 * 64 + 1, 3 * 64 + 2)
    tile = to_uint8(videos[4])[:, :, :, :].repeat(4, 1).repeat(4, 2)  # second row, second column
    np.testing.assert_array_equal(frames[:, 65:129, 65:129, :3], tile)
