"""The real-video datamodule on tiny mp4 / webm / gif files written here: the frames sampled at an fps or a stride
(told by each frame's binary code), seeking, resize and centre crop, bad files and rows skipped and reported,
captions-file errors in one line, WebVid / OpenVid columns, resuming mid-epoch, 2 workers equal to none, and
consistency distillation trained on it through ``vdistill fit``."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import av
import numpy as np
import pytest
import torch
import yaml
from video_helpers import H, W, coded_frames, frame_codes, write_video

from vdistill.data.decode import ClipSpec, read_clip
from vdistill.data.video_clips import VideoClips
from vdistill.data.videos import VideoClipDataset
from vdistill.errors import UserError

LOGGER = "vdistill.data.videos"


def clip(path: Path, rng=None, **spec) -> torch.Tensor:
    frames = read_clip(str(path), ClipSpec(**{"num_frames": 6, "height": H, "width": W, **spec}), rng)
    return torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    """``a.mp4`` (48 frames at 24 fps), ``b.webm`` (48 at 24), ``c.gif`` (30 at 10) of coded frames; ``short.mp4``
    (3 frames), ``corrupt.mp4`` (not a video), and a ``../outside.mp4`` beside the folder."""
    root = tmp_path_factory.mktemp("clips") / "videos"
    root.mkdir()
    write_video(root / "a.mp4", coded_frames(48), fps=24)
    write_video(root / "b.webm", coded_frames(48), fps=24)
    write_video(root / "c.gif", coded_frames(30), fps=10)
    write_video(root / "short.mp4", coded_frames(3), fps=24)
    (root / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    write_video(root.parent / "outside.mp4", coded_frames(48), fps=24)
    return root


def write_csv(path: Path, rows: list[tuple[str, str]], header: str = "path,caption") -> Path:
    path.write_text("\n".join([header, *(f'{p},"{c}"' for p, c in rows)]) + "\n")
    return path


@pytest.mark.parametrize("name", ["a.mp4", "b.webm", "c.gif"])
def test_frames_at_a_stride_or_an_fps_from_the_first_frame(videos, name):
    rate = 10 if name == "c.gif" else 24
    assert frame_codes(clip(videos / name, stride=3)) == [0, 3, 6, 9, 12, 15]
    assert frame_codes(clip(videos / name, fps=rate / 2)) == [0, 2, 4, 6, 8, 10]
    if rate == 24:  # 2.4 source frames a step: the nearest ones to 0, 2.4, 4.8, 7.2, 9.6, 12
        assert frame_codes(clip(videos / name, fps=10.0)) == [0, 2, 5, 7, 10, 12]
    # above the source rate: frames repeat (the nearest to 0, 0.67, 1.33, 2, 2.67, 3.33)
    assert frame_codes(clip(videos / name, fps=1.5 * rate)) == [0, 1, 1, 2, 3, 3]


@pytest.mark.parametrize("name", ["a.mp4", "b.webm", "c.gif"])
def test_a_random_start_seeks_and_gives_the_frames_of_a_full_decode(videos, name):
    """Starts drawn over every frame that fits (mp4 has a key frame every 4 frames: most starts need a seek and a
    decode from the key frame before); pixels equal PyAV's decode of the whole file."""
    with av.open(str(videos / name)) as container:
        every = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    starts = set()
    for seed in range(12):
        got = clip(videos / name, np.random.default_rng(seed), stride=5)
        codes = frame_codes(got)
        assert codes == [codes[0] + 5 * k for k in range(6)] and 0 <= codes[0] <= len(every) - 26
        torch.testing.assert_close(got, torch.from_numpy(every[codes]).permute(0, 3, 1, 2).float() / 255)
        starts.add(codes[0])
    assert len(starts) > 3 and any(s % 4 for s in starts)
    again = clip(videos / name, np.random.default_rng(3), stride=5)
    assert torch.equal(again, clip(videos / name, np.random.default_rng(3), stride=5))


def test_a_seek_that_lands_past_the_clip_falls_back_to_decoding_from_the_start(videos, monkeypatch):
    """A broken index that sends the seek past the clip's first frame is detected (``decode_at`` gives None) and the
    clip is decoded from the start instead: the same frames as a good seek."""
    from vdistill.data import decode

    spec = ClipSpec(num_frames=3, height=H, width=W, stride=2)

    class LateSeek:  # every seek lands on the key frame of frame 32
        def __init__(self, container):
            self.container = container

        def seek(self, offset, stream, **kwargs):
            self.container.seek(int(32 / 24 / stream.time_base), stream=stream, backward=True, any_frame=False)

        def decode(self, stream):
            return self.container.decode(stream)

    with av.open(str(videos / "a.mp4")) as container:
        stream = container.streams.video[0]
        assert decode.decode_at(LateSeek(container), stream, [9 / 24, 11 / 24, 13 / 24], 24.0, spec, seek=True) is None

    calls, real = [], decode.decode_at

    def broken_index(container, stream, targets, rate, spec, seek):
        calls.append(seek)
        return None if seek else real(container, stream, targets, rate, spec, seek)

    good = clip(videos / "a.mp4", np.random.default_rng(5), num_frames=3, stride=2)
    monkeypatch.setattr(decode, "decode_at", broken_index)
    assert torch.equal(clip(videos / "a.mp4", np.random.default_rng(5), num_frames=3, stride=2), good)
    assert calls == [True, False] and frame_codes(good)[0] > 0


@pytest.mark.parametrize("ext", [".mp4", ".webm"])
def test_resize_of_the_short_side_and_centre_crop(tmp_path, ext):
    """A 48 x 96 video of red | green | blue thirds to 24 x 24: scaled to 24 x 48, the middle 24 columns kept
    (source columns 24..71: 8 of red, 32 of green, 8 of blue); a 96 x 48 one cropped in rows; a 24 x 48 one
    scaled up."""
    wide = np.zeros((4, 48, 96, 3), np.uint8)
    for c in range(3):
        wide[:, :, 32 * c: 32 * c + 32, c] = 255
    got = clip(write_video(tmp_path / f"wide{ext}", wide), num_frames=2, height=24, width=24)
    assert got.shape == (2, 3, 24, 24) and got.dtype == torch.float32 and 0 <= got.min() and got.max() <= 1
    expected = torch.zeros(3, 24, 24)
    expected[0, :, :4], expected[1, :, 4:20], expected[2, :, 20:] = 1, 1, 1
    inside = torch.ones(24, dtype=torch.bool)
    inside[[2, 3, 4, 5, 18, 19, 20, 21]] = False  # where two colours mix (4:2:0 chroma is half the width)
    torch.testing.assert_close(got[0][:, :, inside], expected[:, :, inside], atol=0.08, rtol=0)

    tall = wide.transpose(0, 2, 1, 3).copy()
    got = clip(write_video(tmp_path / f"tall{ext}", tall), num_frames=2, height=24, width=24)
    torch.testing.assert_close(got[1][:, inside, :], expected.transpose(1, 2)[:, inside, :], atol=0.08, rtol=0)

    small = np.zeros((4, 24, 48, 3), np.uint8)
    small[:, :, :24, 0], small[:, :, 24:, 2] = 255, 255
    got = clip(write_video(tmp_path / f"small{ext}", small), num_frames=2, height=64, width=64)
    assert got.shape == (2, 3, 64, 64)  # 24 x 48 -> 64 x 128 -> columns 32..95: red then blue
    assert got[0, 0, :, :28].mean() > 0.9 and got[0, 2, :, 36:].mean() > 0.9


def test_bad_files_and_rows_are_skipped_and_reported(videos, tmp_path, caplog):
    """Corrupt, too short and missing files are replaced by the next readable row; rows with an empty caption, a
    URL, ``../`` or an absolute path outside ``video_root`` are dropped when the file is read."""
    rows = [("a.mp4", "clip a"), ("corrupt.mp4", "corrupt"), ("short.mp4", "short"), ("b.webm", "clip b"),
            ("missing.mp4", "gone"), ("c.gif", ""), ("../outside.mp4", "escape"),
            (str(videos.parent / "outside.mp4"), "absolute"), ("http://example.com/v.mp4", "url"),
            ("notes.txt", "text"), ("c.gif", "clip c")]
    captions = write_csv(tmp_path / "captions.csv", rows)
    dm = VideoClips(str(captions), video_root=str(videos), batch_size=1, num_frames=4, height=H, width=W,
                    fps=None, stride=2, num_workers=0)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        dm.setup("fit")
    assert len(dm.dataset) == 6  # 11 rows, 5 dropped when read
    assert caplog.messages == [f"skipped 5 of 11 clips of {str(captions)!r}: c.gif (empty caption), ../outside.mp4 "
                               f"(outside video_root), {videos.parent / 'outside.mp4'} (outside video_root), "
                               "http://example.com/v.mp4 (a URL), notes.txt (unsupported format)"]
    caplog.clear()
    items = [dm.dataset[(0, i)] for i in range(len(dm.dataset))]
    assert [caption for _, caption in items] == ["clip a", "clip b", "clip b", "clip b", "clip c", "clip c"]
    assert not torch.equal(items[1][0], items[3][0])  # a replacement draws its own start frame
    assert dm.dataset.skipped() == 8 and int(dm.dataset.found) == 3
    assert "corrupt.mp4 (unreadable), short.mp4 (too short)" in dm.dataset.report()
    assert "missing.mp4 (missing)" in dm.dataset.report(limit=20)

    loader = dm.train_dataloader()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        batches = list(loader)
    assert len(batches) == 6 and caplog.messages == [f"epoch 0: {dm.dataset.report()}"]
    clips, prompts = batches[0]  # ToyVideos' batch: [videos, (prompt, ...)] from torch's default collate
    assert isinstance(batches[0], list) and clips.shape == (1, 4, 3, H, W) and clips.dtype == torch.float32
    assert isinstance(prompts, tuple) and prompts[0] in ("clip a", "clip b", "clip c")


def test_a_mid_epoch_report_when_the_count_of_bad_files_grows(videos, tmp_path, caplog):
    captions = write_csv(tmp_path / "captions.csv", [("corrupt.mp4", "x"), ("a.mp4", "a"), ("short.mp4", "s"),
                                                     ("b.webm", "b"), ("missing.mp4", "m")])
    dm = VideoClips(str(captions), video_root=str(videos), batch_size=1, num_frames=4, height=8, width=8,
                    num_workers=0, fps=None)
    dm.setup("fit")
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        list(dm.train_dataloader())
    counts = [int(m.split("skipped ")[1].split(" of")[0]) for m in caplog.messages]
    assert counts[-1] == 3 and caplog.messages[-1].startswith("epoch 0: skipped 3 of 5 clips")
    assert counts[:-1] in ([1, 2], [2], [1, 3], [3])  # at 1, 2, 4, ... newly found bad files (two may come at once)


def test_a_dataset_with_no_readable_clip_fails_in_one_line(videos, tmp_path):
    captions = write_csv(tmp_path / "captions.csv", [("corrupt.mp4", "x"), ("short.mp4", "s")])
    dm = VideoClips(str(captions), video_root=str(videos), num_frames=4, height=8, width=8, num_workers=0)
    dm.setup("fit")
    with pytest.raises(UserError, match=r"^no clip of captions file .* could be read: skipped 2 of 2 clips") as err:
        dm.dataset[(0, 0)]
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(("content", "suffix", "message"), [
    (None, ".csv", r"captions file '.*nothing.csv' does not exist"),
    ("folder", ".csv", r"is a folder, not a CSV / TSV / JSONL file"),
    (b"path,caption\n\x00\x01\x02", ".csv", r"is not a text file: byte 13 is NUL"),
    (b"path,caption\na.mp4,\xff\xfe caption\n", ".csv", r"is not UTF-8 text"),
    ("\n \n", ".csv", r"captions file '.*nothing.csv' is empty"),
    ("[1, 2]\n", ".jsonl", r"nothing.jsonl': line 1 is not a JSON object"),
    (b"path,caption\na.mp4,x\n" + b"b.mp4,y\n" * 9000 + b"c.mp4,\x00\n", ".csv",
     r"is not a text file: line 9003 has a NUL byte"),  # past the first 64 KiB
    ("path,caption\n", ".csv", r"has no rows"),
    ("videoid,contentUrl,duration,page_dir,name\n1,http://x/1.mp4,PT00H00M10S,d,a cat\n", ".csv",
     r"has no column 'path' \(columns: videoid, contentUrl, duration, page_dir, name\).*WebVid"),
    ('{"video": "a.mp4", "caption": "x"}\n', ".jsonl", r"has no column 'path' \(columns: video, caption\)"),
    ("path,caption\na.mp4,x\n", ".json", r"give a \.csv, \.tsv, \.jsonl, \.ndjson file"),
    ("path,caption\n../a.mp4,x\n,y\n", ".csv", r"has no usable row: skipped 2 of 2 clips .*outside video_root.*"
     r"line 3 \(no path\)"),
    ("path,caption\nnope.mp4,x\n", ".csv", r"none of the first 1 videos .* exists \(e.g. '.*nope.mp4'\); check "
     r"video_root"),
])
def test_captions_file_errors_in_one_line(videos, tmp_path, content, suffix, message):
    path = tmp_path / f"nothing{suffix}"
    if content == "folder":
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(UserError, match=message) as err:
        VideoClips(str(path), video_root=str(videos), num_workers=0).setup("fit")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"batch_size": 0}, "data batch_size is 0; it must be at least 1"),
    ({"num_frames": 0}, "data num_frames is 0; it must be at least 1"),
    ({"height": 0}, "data height is 0; it must be at least 1"),
    ({"width": -2}, "data width is -2; it must be at least 1"),
    ({"num_workers": -1}, "data num_workers is -1; it must be at least 0"),
    ({"fps": 0.0}, r"data fps is 0.0; it must be > 0"),
    ({"fps": None, "stride": 0}, "data stride is 0; it must be at least 1"),
    ({"stride": 2}, r"data fps \(8.0\) and stride \(2\): give one of them"),
    ({"path_format": "{row.path}"}, r"path_format '\{row.path\}' must name columns as \{column\}"),
])
def test_constructor_arguments_are_checked(kwargs, message):
    with pytest.raises(UserError, match=message):
        VideoClips("missing.csv", **kwargs)  # the arguments are checked before the file


def test_webvid_openvid_and_jsonl_layouts(videos, tmp_path):
    """WebVid's CSV (path from ``{page_dir}/{videoid}.mp4``, caption ``name``), OpenVid-1M's (``video``,
    ``caption``) and JSONL give the same clips; a relative path without video_root starts at the CSV's folder."""
    (videos / "000001_000050").mkdir(exist_ok=True)
    (videos / "000001_000050" / "31353427.mp4").write_bytes((videos / "a.mp4").read_bytes())
    webvid = tmp_path / "results_2M_train.csv"
    webvid.write_text('videoid,contentUrl,duration,page_dir,name\n31353427,https://x/31353427.mp4,PT00H00M02S,'
                      '000001_000050,"Merida, mexico - tourists walking, at sunny summer day."\n')
    openvid = tmp_path / "OpenVid-1M.csv"
    openvid.write_text('video,caption,aesthetic score,motion score\na.mp4,"Merida, mexico - tourists walking, at '
                       'sunny summer day.",5.1,2.0\n')
    jsonl = videos / "captions.jsonl"
    jsonl.write_text(json.dumps({"path": "a.mp4", "caption": "Merida, mexico - tourists walking, at sunny summer "
                                 "day."}) + "\nnot json\n")
    spec = ClipSpec(4, H, W, fps=12.0)
    sets = [VideoClipDataset(webvid, videos, spec, caption_column="name", path_format="{page_dir}/{videoid}.mp4"),
            VideoClipDataset(openvid, videos, spec, path_column="video"), VideoClipDataset(jsonl, None, spec)]
    items = [ds[(1, 0)] for ds in sets]
    for video, caption in items:
        assert caption == "Merida, mexico - tourists walking, at sunny summer day."
        assert torch.equal(video, items[1][0])
    assert sets[2].report() == f"skipped 1 of 2 clips of {str(jsonl)!r}: line 2 (not a JSON object)"
    assert frame_codes(items[0][0])[1:] == [frame_codes(items[0][0])[0] + 2 * k for k in (1, 2, 3)]


@pytest.fixture
def many(videos, tmp_path) -> Path:
    """12 rows over the three formats and a corrupt file, one caption each."""
    names = ["a.mp4", "b.webm", "c.gif", "corrupt.mp4"] * 3
    return write_csv(tmp_path / "many.csv", [(n, f"caption {i}") for i, n in enumerate(names)])


def batches(loader, n: int | None = None) -> list:
    out = []
    for batch in loader:
        out.append((batch[0].clone(), list(batch[1])))
        if n is not None and len(out) == n:
            break
    return out


def assert_same(a: list, b: list) -> None:
    assert len(a) == len(b)
    for (va, pa), (vb, pb) in zip(a, b):
        assert pa == pb and torch.equal(va, vb)


def data(many, videos, workers: int = 0) -> VideoClips:
    dm = VideoClips(str(many), video_root=str(videos), batch_size=2, num_frames=3, height=16, width=16, fps=6.0,
                    num_workers=workers)
    dm.setup("fit")
    return dm


def test_resuming_mid_epoch_gives_the_same_remaining_batches(many, videos, monkeypatch):
    monkeypatch.setenv("PL_GLOBAL_SEED", "7")
    loader = data(many, videos).train_dataloader()
    loader.sampler.set_epoch(1)
    assert {epoch for epoch, _ in loader.sampler} == {1}  # items carry the epoch that seeds their start frames
    straight = batches(loader)
    assert len(straight) == 6 and len({p for _, ps in straight for p in ps}) > 6

    interrupted = data(many, videos).train_dataloader()
    interrupted.sampler.set_epoch(1)
    assert_same(batches(interrupted, 2), straight[:2])
    state = interrupted.state_dict()
    assert state == {"epoch": 1, "batches": 2}
    resumed = data(many, videos).train_dataloader()
    resumed.load_state_dict(state)
    assert_same(batches(resumed), straight[2:])

    other = data(many, videos).train_dataloader()  # epoch 2: another order and other start frames
    other.sampler.set_epoch(2)
    assert not all(torch.equal(a[0], b[0]) for a, b in zip(batches(other), straight))
    ds = other.dataset  # the epoch seeds the start frame of the same item
    assert torch.equal(ds[(1, 0)][0], ds[(1, 0)][0])
    assert not all(torch.equal(ds[(1, i)][0], ds[(2, i)][0]) for i in range(3))


def test_ranks_read_disjoint_halves(many, videos):
    from types import SimpleNamespace

    from vdistill.data.videos import video_loader

    dataset = data(many, videos).dataset
    seen = []
    for rank in (0, 1):
        trainer = SimpleNamespace(distributed_sampler_kwargs={"num_replicas": 2, "rank": rank})
        seen.append([i for _, i in video_loader(dataset, trainer, batch_size=2).sampler])
    assert len(seen[0]) == len(seen[1]) == 6 and sorted(seen[0] + seen[1]) == list(range(12))


def test_two_workers_give_the_same_batches_as_none(many, videos, caplog):
    none = data(many, videos, workers=0)
    two = data(many, videos, workers=2)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert_same(batches(two.train_dataloader()), batches(none.train_dataloader()))
    assert two.dataset.skipped() == 3  # the three corrupt.mp4 rows, marked by worker processes, seen here
    assert caplog.messages[-1] == (f"epoch 0: skipped 3 of 12 clips of {str(many)!r}: "
                                   + ", ".join(["corrupt.mp4 (unreadable)"] * 3))


def test_consistency_distillation_trains_on_clips_through_the_cli(many, videos, tmp_path, monkeypatch):
    """``vdistill fit --data VideoClips ...``: ConsistencyDistillation of a tiny toy DDPM
    teacher (4 frames of 8 x 8) trains two steps on the clips."""
    from objective_helpers import tiny_toy

    from vdistill.backbones.io import save_backbone
    from vdistill.cli import main
    from vdistill.diffusion.schedules import DDPMSchedule
    from vdistill.modules.distill import Distillation

    teacher = save_backbone(tiny_toy(DDPMSchedule()), tmp_path / "teacher")
    config = {"seed_everything": 0, "model": {"class_path": "Distillation", "init_args": {
        "teacher": str(teacher), "student": {"guidance_embedding": True}, "lr": 1e-3,
        "objectives": [{"class_path": "ConsistencyDistillation",
                        "init_args": {"w_min": 1.0, "w_max": 3.0, "guidance": 2.0}}]}},
        "trainer": {"accelerator": "cpu", "devices": 1, "max_steps": 2, "logger": False, "enable_progress_bar": False,
                    "enable_model_summary": False, "enable_checkpointing": False,
                    "default_root_dir": str(tmp_path / "run")}}
    (tmp_path / "fit.yaml").write_text(yaml.safe_dump(config))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.argv", ["vdistill"])  # main(args) runs as if typed, not with pytest's arguments
    steps, models = [], []
    original = Distillation.training_step

    def recording(self, batch, batch_idx):
        loss = original(self, batch, batch_idx)
        steps.append((tuple(batch[0].shape), list(batch[1]), float(loss.detach())))
        models.append(self)
        return loss

    monkeypatch.setattr(Distillation, "training_step", recording)
    main(["fit", "--config", str(tmp_path / "fit.yaml"), "--data", "VideoClips",
          "--data.captions", str(many), "--data.video_root", str(videos), "--data.batch_size", "2",
          "--data.num_frames", "4", "--data.height", "8", "--data.width", "8", "--data.num_workers", "0"])
    assert [shape for shape, _, _ in steps] == [(2, 4, 3, 8, 8)] * 2
    assert all(p.startswith("caption ") for _, prompts, _ in steps for p in prompts)
    assert all(np.isfinite(loss) for _, _, loss in steps)
    assert models[-1].student.guidance_proj.weight.abs().sum() > 0  # zero-initialised, trained


def test_a_missing_captions_file_fails_in_one_line_through_the_cli(tmp_path, capsys):
    from cli_helpers import run_cli

    code, _, err = run_cli(["fit", "--model", "Distillation", "--model.teacher", "toy-ddpm", "--model.objectives",
                            '[{"class_path": "ConsistencyDistillation"}]', "--data", "VideoClips",
                            "--data.captions", str(tmp_path / "webvid.csv")], capsys)
    assert code == 2 and err.strip().splitlines() == [
        f"vdistill: error: captions file {str(tmp_path / 'webvid.csv')!r} does not exist"]
