"""Writers for real videos: the memory of writing a 81 x 480 x 832 video (measured), mp4s at the video's own size
streamed frame by frame, ffmpeg failures, GIFs within their pixel budget, and ``videos.npz`` only where asked."""

from __future__ import annotations

import errno
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import imageio.v2 as imageio_v2
import imageio.v3 as iio
import imageio_ffmpeg
import numpy as np
import pytest
import torch
from cli_helpers import run_cli
from PIL import Image

from vdistill.commands import sample as command
from vdistill.commands.sample import write_samples
from vdistill.errors import UserError
from vdistill.sampling import video_io
from vdistill.sampling.generate import Generated
from vdistill.sampling.video_io import gif_grid, gif_scale, mp4_upscale, to_uint8, write_gif_grid, write_mp4

HERE = Path(__file__).resolve().parent
MiB = 2**20


def scene(T: int, H: int, W: int) -> torch.Tensor:
    """A smooth moving test video ``[T, 3, H, W]`` in [0, 1]: drifting colour waves and a red disc."""
    t = torch.arange(T, dtype=torch.float32).view(T, 1, 1, 1)
    y = torch.arange(H, dtype=torch.float32).view(1, 1, H, 1)
    x = torch.arange(W, dtype=torch.float32).view(1, 1, 1, W)
    c = torch.arange(3, dtype=torch.float32).view(1, 3, 1, 1)
    waves = 0.5 + 0.5 * torch.sin(x / 40 + t / 5 + 2 * c) * torch.cos(y / 30 - t / 7 + c)
    disc = ((x - W / 2 - W / 4 * torch.cos(t / 10)) ** 2 + (y - H / 2) ** 2 < (H / 8) ** 2).float()
    return waves * (1 - disc) + disc * torch.tensor([1.0, 0.1, 0.1]).view(1, 3, 1, 1)


# Runs in a fresh process holding one float Wan-size video (388 MB), as `vdistill sample` holds it after sampling.
# Python side: VmHWM after resetting it (/proc/self/clear_refs 5) minus VmRSS before writing. ffmpeg: the writers
# start it through a tiny wrapper that reports its child's ru_maxrss (read directly, ffmpeg's maxrss would include
# the parent's memory: Linux folds the pre-exec image of a vfork'ed child into it).
MEASURE = """
import json, sys
from pathlib import Path
import imageio_ffmpeg
sys.path[:0] = [{here!r}, {tests!r}]
from test_video_writers import scene
from vdistill.commands.sample import write_samples
from vdistill.sampling.generate import Generated

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024

imageio_ffmpeg.get_ffmpeg_exe = lambda: {wrapper!r}
gen = Generated(scene(81, 480, 832)[None].contiguous(), ["a red disc over colour waves"], 1.0)
out = Path({out!r})
out.mkdir()
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
before = status("VmRSS:")
write_samples(gen, out, fps=16, mp4=1)
print(json.dumps({{"python": status("VmHWM:") - before, "video": gen.videos.numel() * 4}}))
"""

WRAPPER = """#!{python}
import resource, subprocess, sys
code = subprocess.call([{ffmpeg!r}] + sys.argv[1:])
with open({report!r}, "w") as f:
    f.write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024))
sys.exit(code)
"""


def test_a_wan_size_video_is_written_in_bounded_memory(tmp_path):
    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("needs Linux /proc to measure peak RSS")
    wrapper, report, out = tmp_path / "ffmpeg", tmp_path / "ffmpeg_rss", tmp_path / "out"
    ffmpeg = imageio_ffmpeg.get_ffmpeg_exe()
    wrapper.write_text(WRAPPER.format(python=sys.executable, ffmpeg=ffmpeg, report=str(report)))
    wrapper.chmod(0o755)
    script = MEASURE.format(here=str(HERE), tests=str(HERE.parent / "helpers"), wrapper=str(wrapper), out=str(out))
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    python = json.loads(proc.stdout.strip().splitlines()[-1])["python"]
    ffmpeg = int(report.read_text())
    print(f"writing 81 x 480 x 832: python +{python / MiB:.0f} MiB, ffmpeg {ffmpeg / MiB:.0f} MiB")
    # measured 44 MiB (the GIF grid: 24 MiB of frames + Pillow's) and 134-146 MiB; a uint8 copy of the video alone
    # would be 93 MiB more, the old writer's 8x upscaled frames 6 GiB (twice: the array and its bytes)
    assert python < 96 * MiB and ffmpeg < 384 * MiB and python + ffmpeg < 512 * MiB

    assert "videos.npz not written" in proc.stdout and not (out / "videos.npz").exists()  # 93 MiB > 64 MiB
    (mp4,) = (out / "mp4").iterdir()
    assert imageio_ffmpeg.count_frames_and_secs(str(mp4))[0] == 81
    with imageio_v2.get_reader(mp4, format="FFMPEG") as reader:
        first = reader.get_data(0)
    assert first.shape == (480, 832, 3)  # its own size: no upscaling, no padding
    assert np.abs(first.astype(int) - to_uint8(scene(1, 480, 832))[0]).mean() < 6
    with Image.open(out / "grid.gif") as gif:  # 32 Mpx over 81 frames: box-downscaled 2x to 8 Mpx
        assert gif.size == (416, 240) and gif.n_frames == 81


class Recording(subprocess.Popen):
    """``Popen`` that records the size of every write to the encoder's stdin and keeps the last process."""

    writes: list[int] = []
    last: Recording | None = None

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        Recording.last, stdin = self, self.stdin

        class Stdin:
            def write(self, data) -> int:
                Recording.writes.append(memoryview(data).nbytes)
                return stdin.write(data)

            def close(self) -> None:
                stdin.close()

        self.stdin = Stdin()


@pytest.fixture
def recording(monkeypatch):
    Recording.writes, Recording.last = [], None
    monkeypatch.setattr(video_io.subprocess, "Popen", Recording)
    return Recording


def test_a_toy_mp4_is_upscaled_and_streamed_frame_by_frame(tmp_path, recording):
    video = scene(8, 16, 16)
    path = write_mp4(tmp_path / "toy.mp4", video, fps=8)
    assert recording.writes == [256 * 256 * 3] * 8  # one write per frame: 16x nearest-neighbour, 256 px
    frames = np.stack(imageio_v2.mimread(path, format="FFMPEG"))
    assert frames.shape == (8, 256, 256, 3)
    want = to_uint8(video).repeat(16, 1).repeat(16, 2).astype(int)
    assert np.abs(frames.astype(int) - want).mean() < 6


def test_real_sizes_are_not_upscaled(tmp_path):
    assert [mp4_upscale(*s) for s in ((16, 16), (8, 8), (100, 300), (256, 256), (480, 832))] == [16, 32, 2, 1, 1]
    frames = np.stack(imageio_v2.mimread(write_mp4(tmp_path / "a.mp4", scene(3, 256, 258)), format="FFMPEG"))
    assert frames.shape == (3, 256, 258, 3)
    frames = np.stack(imageio_v2.mimread(write_mp4(tmp_path / "b.mp4", to_uint8(scene(2, 100, 130))),
                                         format="FFMPEG"))
    assert frames.shape == (2, 200, 260, 3)  # uint8 [T, H, W, 3] input too; 100 px short side: 2x


FAKE_FFMPEG = """#!{python}
import sys
sys.stdin.buffer.read({nbytes})  # one frame, then the disk is "full"
sys.stderr.write({message!r})
sys.exit({code})
"""


@pytest.mark.parametrize("message, code, err, text", [
    ("[out#0/mp4] Error writing trailer: No space left on device\n", 1, errno.ENOSPC, "No space left on device"),
    ("Conversion failed!\n", 1, errno.EIO, "ffmpeg failed after 1 of 50 frames: Conversion failed!"),
    ("", 0, errno.EIO, "ffmpeg failed after 1 of 50 frames: exit status 0"),  # stopped reading, said nothing
])
def test_an_encoder_that_stops_midway_names_the_file(message, code, err, text, tmp_path, monkeypatch, recording):
    fake = tmp_path / "ffmpeg"
    fake.write_text(FAKE_FFMPEG.format(python=sys.executable, nbytes=256 * 256 * 3, message=message, code=code))
    fake.chmod(0o755)
    monkeypatch.setattr(imageio_ffmpeg, "get_ffmpeg_exe", lambda: str(fake))
    with pytest.raises(OSError) as info:
        write_mp4(tmp_path / "x.mp4", scene(50, 256, 256))
    assert info.value.errno == err and info.value.filename == str(tmp_path / "x.mp4") and text in str(info.value)
    assert recording.last.returncode == code  # waited for, not left running


def test_an_error_while_writing_kills_the_encoder(tmp_path, monkeypatch, recording):
    real, calls = video_io.upscale_nearest, []

    def upscale(frame, factor):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(frame, factor)

    monkeypatch.setattr(video_io, "upscale_nearest", upscale)
    with pytest.raises(KeyboardInterrupt):
        write_mp4(tmp_path / "x.mp4", scene(8, 16, 16))
    assert recording.last.returncode == -9


def test_gif_budget():
    # toy bench grid: 48 videos of 8 x 16 x 16 in 4 rows of 12, 4x tiles (1.6 Mpx) fit as they are
    assert gif_scale(8, 16, 16, 4, 12, 4) == (4, 1)
    # four Wan videos, 2 x 2: 130 Mpx at 1x; box 3x gives 160 x 277 tiles (81 x 321 x 555 = 14 Mpx <= 16 Mi)
    assert gif_scale(81, 480, 832, 2, 2, 1) == (1, 3)
    # a budget below 8x: the largest upscaling that fits (2x: 8 x 32 x 65 px), before any downscaling
    assert gif_scale(8, 16, 16, 1, 2, 8, max_pixels=8 * 33 * 67) == (2, 1)


def test_gif_grid_downscales_by_the_block_mean(tmp_path):
    videos = torch.rand(3, 4, 3, 30, 40, generator=torch.Generator().manual_seed(0))
    grid = gif_grid(videos, ncols=3, max_pixels=4000)  # 2x up: 58,080 px; 1x: 14,640; box 2x: 3,720
    assert grid.shape == (4, 15, 3 * 21 - 1, 3)
    blocks = videos.reshape(3, 4, 3, 15, 2, 20, 2).mean(dim=(4, 6))  # the mean of each 2 x 2 block
    for i in range(3):
        np.testing.assert_array_equal(grid[:, :, i * 21: i * 21 + 20], to_uint8(blocks[i]))
    assert (grid[:, :, 20] == 128).all()  # the grey line between tiles
    with Image.open(write_gif_grid(tmp_path / "g.gif", videos, ncols=3, max_pixels=4000)) as gif:
        assert gif.size == (62, 15) and gif.n_frames == 4


def test_many_colours_are_quantized_closely(tmp_path):
    video = scene(6, 64, 96)  # thousands of colours per frame
    frames = iio.imread(write_gif_grid(tmp_path / "g.gif", video[None], ncols=1), index=None, extension=".gif")
    assert frames.shape[:3] == (6, 64, 96)
    assert np.abs(frames[..., :3].astype(int) - to_uint8(video).astype(int)).mean() < 6


def test_to_uint8_in_chunks_equals_the_whole_batch():
    videos = torch.randn(3, 5, 3, 7, 9, generator=torch.Generator().manual_seed(0))  # out of [0, 1] too
    whole = (videos.clamp(0, 1) * 255).round().to(torch.uint8).movedim(-3, -1).numpy()
    np.testing.assert_array_equal(to_uint8(videos), whole)
    np.testing.assert_array_equal(to_uint8(videos[0, 0]), whole[0, 0])  # one frame [3, H, W]


def generated(n: int = 2) -> Generated:
    return Generated(torch.rand(n, 4, 3, 16, 16, generator=torch.Generator().manual_seed(0)),
                     [f"prompt {i}" for i in range(n)], 0.1)


@pytest.mark.parametrize("npz, limit, written", [
    ("auto", 2 * 4 * 16 * 16 * 3, True),  # exactly at the limit
    ("auto", 2 * 4 * 16 * 16 * 3 - 1, False),
    ("always", 1, True),
    ("never", 2**40, False),
])
def test_npz_modes(npz, limit, written, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(video_io, "NPZ_AUTO_BYTES", limit)
    write_samples(generated(), tmp_path, fps=8, mp4=0, npz=npz)
    assert (tmp_path / "videos.npz").is_file() == written and (tmp_path / "grid.gif").is_file()
    assert ("--npz always writes it" in capsys.readouterr().out) == (npz == "auto" and not written)
    with pytest.raises(UserError, match="npz must be one of auto, always, never; got 'yes'"):
        write_samples(generated(), tmp_path, fps=8, npz="yes")


def test_sample_npz_flag(tmp_path, capsys, monkeypatch):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red circle moving left\n")
    code, _, err = run_cli(["sample", "--model", "toy-flow", "--steps", "1", "--prompts", str(prompts), "--out",
                            str(tmp_path / "s"), "--mp4", "1", "--npz", "never"], capsys)
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == ["grid.gif", "mp4", "toybench.json"]
    monkeypatch.setattr(command, "load_backbone", lambda *a, **k: pytest.fail("model loaded"))
    code, _, err = run_cli(["sample", "--model", "toy-flow", "--out", str(tmp_path / "t"), "--npz", "maybe"], capsys)
    assert code == 2 and err.strip() == "vdistill: error: --npz must be one of auto, always, never; got 'maybe'"
