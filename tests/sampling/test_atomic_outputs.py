"""Atomic outputs: a failed ``sample`` / ``bench`` / ``export`` (full disk, an exception in a writer, kill -9)
leaves the earlier result byte-identical and loadable, no temporary folder, and one error line naming the path."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import safetensors.torch
import torch
import yaml
from cli_helpers import run_cli
from safetensors import SafetensorError

from vdistill.backbones.io import load_backbone
from vdistill.callbacks.export import ExportBackbone
from vdistill.errors import UserError
from vdistill.files import atomic_folder, atomic_write, atomic_write_text, recover

ENOSPC = OSError(errno.ENOSPC, "No space left on device")  # as numpy's zip writer and Pillow raise it: no file name
FULL = r"\[Errno 28\] No space left on device"


@pytest.fixture
def prompts(tmp_path) -> Path:
    path = tmp_path / "prompts.txt"
    path.write_text("a red circle moving left\na blue square moving up\n")
    return path


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def leftovers(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if re.search(r"\.[0-9a-f]{8}\.(tmp|old)$", p.name)]


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def sample(prompts: Path, out: Path, capsys, seed: int = 0, extra: tuple[str, ...] = ()) -> tuple[int, str]:
    code, _, err = run_cli(["sample", "--model", "toy-flow", "--steps", "1", "--prompts", str(prompts),
                            "--out", str(out), "--seed", str(seed), "--mp4", "1", *extra], capsys)
    return code, err


def fail_writing_midway(monkeypatch, target: str) -> None:
    """``Path.write_bytes`` (the GIF writer's last step) writes half of ``target``, then the disk is full."""
    real = Path.write_bytes

    def write_bytes(self, data):
        if self.name == target:
            real(self, data[: len(data) // 2])
            raise ENOSPC
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", write_bytes)


def fail_savez(monkeypatch) -> None:
    def savez(file, **arrays):
        file.write(b"PK\x03\x04 half a zip")
        raise ENOSPC

    monkeypatch.setattr(np, "savez", savez)


@pytest.mark.parametrize("where, fail", [("grid.gif", lambda mp: fail_writing_midway(mp, "grid.gif")),
                                         ("videos.npz", fail_savez)])
def test_failed_sample_keeps_the_earlier_folder(where, fail, prompts, tmp_path, capsys, monkeypatch):
    out = tmp_path / "s"
    assert sample(prompts, out, capsys)[0] == 0
    before = snapshot(out)
    assert {"videos.npz", "grid.gif", "toybench.json"} <= set(before) and len(list((out / "mp4").iterdir())) == 1
    fail(monkeypatch)
    code, err = sample(prompts, out, capsys, seed=7)  # other seeds: other videos, had they been written
    assert code == 2
    assert re.fullmatch(rf"vdistill: error: cannot write {re.escape(repr(str(out / where)))}: {FULL}",
                        one_line(err))
    assert snapshot(out) == before and not leftovers(tmp_path)
    monkeypatch.undo()
    with np.load(out / "videos.npz") as data:  # still the complete first result
        assert data["videos"].shape == (2, 8, 16, 16, 3)


def test_a_successful_sample_replaces_the_whole_folder(prompts, tmp_path, capsys):
    out = tmp_path / "s"
    assert sample(prompts, out, capsys)[0] == 0
    first = snapshot(out)
    assert sample(prompts, out, capsys, seed=5, extra=("--mp4", "0"))[0] == 0
    second = snapshot(out)
    assert first["videos.npz"] != second["videos.npz"]
    assert not any(k.startswith("mp4") for k in second)  # no mp4 of the first run beside the new videos
    assert not leftovers(tmp_path)


def test_failed_sample_into_a_new_folder_leaves_none(prompts, tmp_path, capsys, monkeypatch):
    fail_writing_midway(monkeypatch, "grid.gif")
    code, err = sample(prompts, tmp_path / "runs" / "s", capsys)
    assert code == 2 and "grid.gif" in one_line(err)
    assert not (tmp_path / "runs" / "s").exists() and not leftovers(tmp_path)


def test_sample_refuses_a_folder_it_would_destroy(prompts, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("vdistill.commands.sample.load_backbone", lambda *a, **k: pytest.fail("model loaded"))
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "last.ckpt").write_text("precious")
    code, err = sample(prompts, tmp_path / "run", capsys)
    assert code == 2 and "'last.ckpt'" in one_line(err) and "replaced as a whole" in err
    monkeypatch.chdir(tmp_path / "run")
    code, err = sample(prompts, Path("."), capsys)
    assert code == 2 and "holds the current folder" in one_line(err)
    assert (tmp_path / "run" / "last.ckpt").read_text() == "precious"


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A 64 KiB tmpfs: room for one toy sample folder, not for two. Skipped where mounting is not allowed."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_a_really_full_disk_keeps_the_earlier_result(tiny_tmpfs, prompts, capsys):
    out = tiny_tmpfs / "s"
    assert sample(prompts, out, capsys)[0] == 0
    before = snapshot(out)
    code, err = sample(prompts, out, capsys, seed=3)  # the new folder cannot fit beside the old one
    assert code == 2
    assert re.fullmatch(rf"vdistill: error: cannot write '{re.escape(str(out))}/[\w./]+': {FULL}", one_line(err))
    assert snapshot(out) == before and not leftovers(tiny_tmpfs)
    with np.load(out / "videos.npz") as data:
        assert data["videos"].shape == (2, 8, 16, 16, 3)


def bench_file(tmp_path: Path, prompts: Path) -> Path:
    spec = {"out": str(tmp_path / "bench"), "prompts": str(prompts), "mp4": 0,
            "rows": [{"name": "a", "model": "toy-flow", "steps": 1}, {"name": "b", "model": "toy-flow", "steps": 2}]}
    path = tmp_path / "rows.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_failed_bench_keeps_every_earlier_row_and_table(prompts, tmp_path, capsys, monkeypatch):
    rows = bench_file(tmp_path, prompts)
    assert run_cli(["bench", str(rows)], capsys)[0] == 0
    out = tmp_path / "bench"
    before = snapshot(out)
    assert {"toybench.md", "toybench.json", "samples/a/videos.npz", "samples/b/grid.gif"} <= set(before)
    calls = []
    real = Path.write_bytes

    def write_bytes(self, data):  # row a is written completely; row b's grid hits the full disk
        calls.append(self.name)
        if self.name == "grid.gif" and len(calls) == 2:
            raise ENOSPC
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", write_bytes)
    code, _, err = run_cli(["bench", str(rows)], capsys)
    assert code == 2 and calls == ["grid.gif", "grid.gif"]
    assert re.fullmatch(rf"vdistill: error: cannot write '{re.escape(str(out))}/samples/b/grid.gif': {FULL}",
                        one_line(err))
    assert snapshot(out) == before and not leftovers(tmp_path)  # row a was not swapped in either


def test_failed_bench_table_keeps_the_earlier_table(prompts, tmp_path, capsys, monkeypatch):
    rows = bench_file(tmp_path, prompts)
    assert run_cli(["bench", str(rows)], capsys)[0] == 0
    out = tmp_path / "bench"
    before = json.loads((out / "toybench.json").read_text())
    real = Path.write_text

    def write_text(self, data, *args, **kwargs):
        if self.name.startswith("toybench.json."):
            real(self, data[:10], *args, **kwargs)
            raise ENOSPC
        return real(self, data, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", write_text)
    code, _, err = run_cli(["bench", str(rows), "--rows", "a"], capsys)
    assert code == 2
    assert re.fullmatch(rf"vdistill: error: cannot write '{re.escape(str(out))}/toybench.json': {FULL}",
                        one_line(err))
    assert json.loads((out / "toybench.json").read_text()) == before and not leftovers(tmp_path)


def export(out: Path, capsys) -> tuple[int, str]:
    code, _, err = run_cli(["export", "--ckpt", "toy-flow", "--out", str(out)], capsys)
    return code, err


def fail_safetensors(monkeypatch, error: Exception) -> None:
    """The safetensors writer writes part of the file, then reports the full disk as ``error``."""
    def serialize_file(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\x00" * 100)
        raise error

    monkeypatch.setattr(safetensors.torch, "serialize_file", serialize_file)


# what safetensors 0.x really raises on a full disk (checked on a tmpfs), and a plain OSError without a path
DISK_FULL = [SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)"), ENOSPC]


@pytest.mark.parametrize("error", DISK_FULL, ids=["SafetensorError", "OSError"])
def test_failed_export_keeps_the_earlier_export(error, tmp_path, prompts, capsys, monkeypatch):
    out = tmp_path / "export"
    assert export(out, capsys)[0] == 0
    before = snapshot(out)
    fail_safetensors(monkeypatch, error)
    code, err = export(out, capsys)
    assert code == 2
    line = one_line(err)
    assert line.startswith(f"vdistill: error: cannot write {str(out / 'model.safetensors')!r}: ")
    assert "No space left on device" in line
    assert snapshot(out) == before and not leftovers(tmp_path)
    monkeypatch.undo()
    code, err = sample(prompts, tmp_path / "s", capsys, extra=("--model", str(out)))  # the earlier export samples
    assert code == 0, err


@pytest.mark.parametrize("error", DISK_FULL, ids=["SafetensorError", "OSError"])
def test_failed_export_into_a_new_folder_leaves_none(error, tmp_path, capsys, monkeypatch):
    fail_safetensors(monkeypatch, error)
    code, err = export(tmp_path / "export", capsys)
    assert code == 2 and "model.safetensors" in one_line(err)
    assert list(tmp_path.iterdir()) == []


def test_export_refuses_a_folder_it_would_destroy(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("vdistill.backbones.export.load_backbone", lambda *a, **k: pytest.fail("checkpoint loaded"))
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("precious")
    code, err = export(tmp_path / "run", capsys)
    assert code == 2 and "'notes.txt'" in one_line(err)
    assert (tmp_path / "run" / "notes.txt").read_text() == "precious"


class Holder(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = load_backbone("toy-flow")


def test_export_callback_is_atomic(tmp_path, monkeypatch):
    module, trainer, out = Holder(), SimpleNamespace(is_global_zero=True), tmp_path / "export"
    callback = ExportBackbone(str(out), ema=False)
    callback.setup(trainer, module, "fit")
    callback.on_train_end(trainer, module)
    before = snapshot(out)
    with torch.no_grad():
        next(module.backbone.parameters()).add_(1.0)  # a later fit's different weights
    fail_safetensors(monkeypatch, DISK_FULL[0])
    with pytest.raises(UserError, match=rf"cannot write {re.escape(repr(str(out / 'model.safetensors')))}"):
        callback.on_train_end(trainer, module)
    assert snapshot(out) == before and not leftovers(tmp_path)
    monkeypatch.undo()
    callback.on_train_end(trainer, module)  # a fit that succeeds replaces it
    assert snapshot(out)["model.safetensors"] != before["model.safetensors"]
    loaded = load_backbone(out)
    torch.testing.assert_close(next(loaded.parameters()), next(module.backbone.parameters()))
    (out / "notes.txt").write_text("x")
    with pytest.raises(UserError, match="'notes.txt'"):  # refused when fit starts, not after training
        callback.setup(trainer, module, "fit")


# kill -9 at each moment of the swap, in a child process (the flock of a killed writer must be released)
KILLED_WRITER = """
import os, signal, sys
from pathlib import Path
from vdistill import files

final, moment = Path(sys.argv[1]), sys.argv[2]
real_rename = os.rename

def rename(src, dst):
    real_rename(src, dst)
    if moment == "between renames" and str(dst).endswith(".old"):
        os.kill(os.getpid(), signal.SIGKILL)

os.rename = rename
with files.atomic_folder(final, ["*"]) as tmp:
    (tmp / "result.txt").write_text("new")
    if moment == "while writing":
        os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.parametrize("moment", ["while writing", "between renames"])
def test_a_killed_writer_leaves_the_old_result_recoverable(moment, tmp_path):
    final = tmp_path / "out"
    final.mkdir()
    (final / "result.txt").write_text("old")
    script = tmp_path / "writer.py"
    script.write_text(textwrap.dedent(KILLED_WRITER))
    proc = subprocess.run([sys.executable, str(script), str(final), moment], capture_output=True)
    assert proc.returncode == -9, proc.stderr.decode()
    left = sorted(p.name.rsplit(".", 1)[-1] for p in leftovers(tmp_path))
    assert left == (["tmp"] if moment == "while writing" else ["old", "tmp"])
    assert final.exists() == (moment == "while writing")
    recover(final)
    assert (final / "result.txt").read_text() == "old" and not leftovers(tmp_path)


def test_recovery_leaves_a_live_writer_alone(tmp_path):
    final = tmp_path / "out"
    with atomic_folder(final, ["*"]) as tmp:
        (tmp / "result.txt").write_text("new")
        recover(final)  # as another process starting now would: this writer's folder is locked, so kept
        assert (tmp / "result.txt").read_text() == "new"
    assert (final / "result.txt").read_text() == "new" and not leftovers(tmp_path)


def test_interrupted_writer_removes_its_folder(tmp_path):
    final = tmp_path / "out"
    final.mkdir()
    (final / "result.txt").write_text("old")
    with pytest.raises(KeyboardInterrupt), atomic_folder(final, ["*"]) as tmp:
        (tmp / "result.txt").write_text("new")
        raise KeyboardInterrupt
    assert (final / "result.txt").read_text() == "old" and not leftovers(tmp_path)
    atomic_write_text(tmp_path / "table.md", "old")

    def interrupted(tmp: Path) -> None:
        tmp.write_text("ne")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(tmp_path / "table.md", interrupted)
    assert (tmp_path / "table.md").read_text() == "old" and not leftovers(tmp_path)
