"""Untrusted trajectory data: manifest fields and paths, shard checksums (once per shard and process), non-finite
rows and teacher outputs, argument checks before any work, and a full disk during synthesis."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from cli_helpers import run_cli
from synth_helpers import KEYS, PROMPTS, flip_bit, one_thread, tiny_teacher, write_nan
from torch.utils.data import DataLoader

import vdistill.commands.synth as command
import vdistill.data.shards as shards
import vdistill.synth.writer as writer
from vdistill.backbones.io import save_backbone
from vdistill.data.toy import ToyVideos
from vdistill.data.trajectories import TrajectoryData, TrajectoryDataset, collate
from vdistill.errors import UserError
from vdistill.synth import load_manifest, synthesize, verify

RUN = dict(key_indices=KEYS, shard_size=2, batch_size=2, seed=7, progress=False)


@pytest.fixture(scope="module")
def reference(teacher, tmp_path_factory) -> Path:
    """5 prompts in 3 shards (bfloat16)."""
    root = tmp_path_factory.mktemp("reference")
    with one_thread():
        synthesize(teacher, PROMPTS, root, **RUN)
    return root


@pytest.fixture
def data(reference, tmp_path) -> Path:
    """A copy of the reference set to tamper with."""
    return Path(shutil.copytree(reference, tmp_path / "data"))


def one_line_error(code: int, err: str) -> str:
    assert code == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err.strip()


def edit_manifest(root: Path, edit) -> Path:
    path = root / "manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))
    return path


# -- manifests ------------------------------------------------------------------------------------------------
def _set(keys: tuple, value):
    def edit(manifest: dict) -> None:
        obj = manifest
        for k in keys[:-1]:
            obj = obj[k]
        obj[keys[-1]] = value
    return edit


WRONG_FIELDS = {
    "count text": (("shards", 1, "count"), "abc", r"shards\[1\]\.count is 'abc', expected a non-negative integer"),
    "index bool": (("shards", 0, "index"), True, r"shards\[0\]\.index is True, expected a non-negative integer"),
    "bytes negative": (("shards", 2, "bytes"), -1, r"shards\[2\]\.bytes is -1"),
    "sha256 short": (("shards", 0, "sha256"), "abc123", r"shards\[0\]\.sha256 is 'abc123', expected 64 hexadecimal"),
    "file number": (("shards", 0, "file"), 7, r"shards\[0\]\.file is 7, expected a string"),
    "entry list": (("shards", 0), [1, 2], r"shards\[0\] is \[1, 2\], expected an object"),
    "latent shape": (("settings", "latent_shape"), [3, 0, 8, 8], r"settings\.latent_shape is \[3, 0, 8, 8\]"),
    "key indices": (("settings", "key_indices"), "0,2,4,6", r"settings\.key_indices is '0,2,4,6', expected a list"),
    "timesteps": (("settings", "key_timesteps"), [1.0, 0.5], r"settings\.key_timesteps .* expected 4 numbers"),
    "dtype": (("settings", "dtype"), "int8", r"settings\.dtype is 'int8', expected one of 'bfloat16'"),
    "seed": (("settings", "seed"), 7.5, r"settings\.seed is 7\.5, expected an integer"),
    "video size": (("settings", "video_size"), [4, 8], r"settings\.video_size is \[4, 8\], expected 3 positive"),
    "num_shards": (("num_shards",), "3", r"num_shards is '3', expected a non-negative integer"),
    "index past the end": (("shards", 2, "index"), 3, r"shards\[2\]\.index is 3, expected below num_shards \(3\)"),
}


@pytest.mark.parametrize("case", list(WRONG_FIELDS))
def test_manifest_fields_of_the_wrong_type_are_refused(data, case):
    keys, value, message = WRONG_FIELDS[case]
    path = edit_manifest(data, _set(keys, value))
    with pytest.raises(UserError, match=rf"^manifest '{path}': {message}"):
        TrajectoryDataset(data)


def test_a_missing_setting_is_named(data):
    path = edit_manifest(data, lambda m: m["settings"].pop("shard_size"))
    with pytest.raises(UserError, match=rf"manifest '{path}': settings\.shard_size is absent, expected a positive"):
        load_manifest(data)


@pytest.mark.parametrize("file", ["../outside/shard-00000.safetensors", "sub/shard-00000.safetensors",
                                  "{outside}/shard-00000.safetensors", "shard-00001.safetensors"])
def test_manifest_paths_stay_in_their_folder(data, tmp_path, file, monkeypatch, teacher, teacher_dir, capsys):
    """A manifest entry naming any file but ``shard_name(index)`` is refused before a file is opened, by readers and
    by a resumed synthesis alike (a valid shard lies at the named place, so opening it would have worked)."""
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.copy(data / "shard-00000.safetensors", outside)
    (data / "sub").mkdir()
    shutil.copy(data / "shard-00000.safetensors", data / "sub")
    file = file.format(outside=outside)
    for name in ("manifest.json", "manifest-r0.json"):
        path = data / name
        manifest = json.loads(path.read_text())
        manifest["shards"][0]["file"] = file
        path.write_text(json.dumps(manifest))
    opened = []
    monkeypatch.setattr(shards, "safe_open", lambda path, *a, **k: opened.append(path))
    monkeypatch.setattr(shards, "file_sha256", lambda path, *a, **k: opened.append(path))
    message = rf"manifest '{data / 'manifest.json'}': shards\[0\]\.file is '{file}', expected 'shard-00000.safetensors'"
    with pytest.raises(UserError, match=message):
        TrajectoryDataset(data)
    with pytest.raises(UserError, match=message):
        synthesize(teacher, PROMPTS, data, **RUN)
    assert opened == []
    code, _, err = run_cli(["synth", "--model", str(teacher_dir / "flow"), "--out", str(data), "--key-indices", "0,2"],
                           capsys)
    assert "shards[0].file" in one_line_error(code, err)



# -- checksums ------------------------------------------------------------------------------------------------
@pytest.fixture
def hashed(tmp_path, monkeypatch):
    """``hashed()``: the shards ``check_shard`` hashed so far, in this process and its forked DataLoader workers (a
    log file: a worker's memory is its own)."""
    real, log = shards.file_sha256, tmp_path / "hashed.log"
    log.touch()

    def logging(path, *args, **kwargs):
        with open(log, "a") as f:
            f.write(Path(path).name + "\n")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(shards, "file_sha256", logging)
    return lambda: log.read_text().split()


ALL_SHARDS = [f"shard-0000{i}.safetensors" for i in range(3)]


def test_each_shard_is_hashed_once_per_process(data, hashed):
    ds = TrajectoryDataset(data, max_open=1)
    for i in (0, 2, 4, 1, 3, 0, 4):  # max_open=1: every change of shard closes one and reopens another
        ds[i]
    assert sorted(hashed()) == ALL_SHARDS
    unverified = TrajectoryDataset(data, verify=False)
    for i in range(5):
        unverified[i]
    assert sorted(hashed()) == ALL_SHARDS


def test_dataloader_workers_share_the_verified_flags(data, hashed):
    """Two workers, fresh ones each epoch; in the second epoch shard 0 goes to the other worker: no shard is hashed
    twice, the workers' flags are the process's."""
    ds = TrajectoryDataset(data)
    for order in ([0, 1, 2, 3, 4], [2, 3, 0, 1, 4]):  # batches of 2: one shard a batch, worker b % 2 takes batch b
        batches = list(DataLoader(ds, batch_size=2, sampler=order, num_workers=2, collate_fn=collate))
        assert [b["index"].tolist() for b in batches] == [order[:2], order[2:4], order[4:]]
    assert sorted(hashed()) == ALL_SHARDS
    assert ds._verified.tolist() == [1, 1, 1]


def test_verified_flags_survive_spawned_workers(data):
    ds = TrajectoryDataset(data)
    list(DataLoader(ds, batch_size=2, num_workers=2, collate_fn=collate, multiprocessing_context="spawn"))
    assert ds._verified.tolist() == [1, 1, 1]  # set by the workers, seen here


def test_a_flipped_bit_is_refused_in_one_line(data):
    shard = data / "shard-00001.safetensors"
    before = TrajectoryDataset(data, verify=False)[3]["latents"].clone()
    flip_bit(shard)  # the middle of shard 1's latents: the first value of its second row, sample 3
    unchecked = TrajectoryDataset(data, verify=False)[3]["latents"]  # a finite value changed: nothing else sees it
    assert unchecked.isfinite().all() and not torch.equal(before, unchecked)
    with pytest.raises(UserError, match=rf"^shard '{shard}' is corrupt \(sha256 differs from the manifest\); delete"):
        TrajectoryDataset(data)[2]
    loader = DataLoader(TrajectoryDataset(data), batch_size=2, num_workers=1, collate_fn=collate)
    with pytest.raises(UserError) as err:
        list(loader)
    assert "\n" not in str(err.value) and str(err.value).startswith(f"shard '{shard}' is corrupt (sha256 differs")
    with pytest.raises(UserError, match=r"shard-00001.*sha256 differs"):
        verify(data)


# -- non-finite values ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("tensor, what", [("latents", "latents"), ("text.pooled", r"text tensors \['pooled'\]")])
def test_non_finite_rows_are_refused(data, tensor, what):
    """NaN in sample 3 (shard 1, row 1), the manifest's hash fixed up: the checksum passes, the row check refuses
    that sample and only that one."""
    write_nan(data, 1, 1, tensor)
    ds = TrajectoryDataset(data)
    assert ds[2]["latents"].isfinite().all()
    with pytest.raises(UserError, match=rf"^shard '{data / 'shard-00001.safetensors'}' is corrupt \(non-finite "
                                        rf"{what} in sample 3\); delete it and rerun"):
        ds[3]
    with pytest.raises(UserError, match=rf"non-finite {tensor} in samples \[3\]"):  # the hash matches: the content
        verify(data)                                                                   # check catches it


def test_synth_verify_checks_a_whole_set_in_one_command(data, capsys):
    code, out, err = run_cli(["synth", "--verify", "--out", str(data)], capsys)
    assert code == 0, err
    assert f"{data}: 3 shards, 5 samples" in out and "complete" in out
    write_nan(data, 2, 0)
    code, _, err = run_cli(["synth", "--verify", "--out", str(data)], capsys)
    assert one_line_error(code, err).endswith("(non-finite latents in samples [4]); delete it and rerun the same "
                                              "synthesis command to regenerate it")
    flip_bit(data / "shard-00000.safetensors")
    code, _, err = run_cli(["synth", "--verify", "--out", str(data)], capsys)
    assert "shard-00000.safetensors' is corrupt (sha256 differs" in one_line_error(code, err)
    code, _, err = run_cli(["synth", "--out", str(data)], capsys)
    assert one_line_error(code, err).endswith("needs --model (the teacher), or --verify to check the set in --out")


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory) -> Path:
    """A tiny 6-step flow teacher on disk (what ``vdistill synth --model`` loads)."""
    root = tmp_path_factory.mktemp("teacher")
    save_backbone(tiny_teacher(), root / "flow")
    big = tiny_teacher()
    with torch.no_grad():  # velocities ~1e6: latents far past float16's largest value, finite in float32
        big.denoiser.out.weight.mul_(1e7)
        big.denoiser.out.bias.mul_(1e7)
    save_backbone(big, root / "overflow")
    return root


def test_synth_refuses_non_finite_teacher_outputs(teacher_dir, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    args = ["synth", "--model", str(teacher_dir / "overflow"), "--prompts", str(prompts), "--key-indices", "0,3,6",
            "--shard-size", "2"]
    code, _, err = run_cli([*args, "--out", str(tmp_path / "f16"), "--dtype", "float16"], capsys)
    line = one_line_error(code, err)
    assert "latents for prompts 0..1 are not finite (NaN or Inf in float16): not stored" in line
    assert "--dtype float32" in line
    assert not list((tmp_path / "f16").glob("shard-*"))
    code, _, err = run_cli([*args, "--out", str(tmp_path / "f32"), "--dtype", "float32"], capsys)
    assert code == 0, err
    assert TrajectoryDataset(tmp_path / "f32")[4]["latents"].abs().max() > 65504  # the advice works


# -- argument checks ------------------------------------------------------------------------------------------
BAD_ARGS = {
    "batch size 0": (["--batch-size", "0"], r"argument --batch-size: must be at least 1, got 0"),
    "shard size 0": (["--shard-size", "0"], r"argument --shard-size: must be at least 1, got 0"),
    "steps 0": (["--steps", "0"], r"argument --steps: must be at least 1, got 0"),
    "steps negative": (["--steps", "-3"], r"argument --steps: must be at least 1, got -3"),
    "repeat 0": (["--repeat", "0"], r"argument --repeat: must be at least 1, got 0"),
    "one key index": (["--key-indices", "6"], r"--key-indices: give at least two non-negative, strictly increasing"),
    "negative key index": (["--key-indices=-1,6"], r"--key-indices: .*got '-1,6'"),
    "decreasing": (["--key-indices", "4,2"], r"--key-indices: .*strictly increasing.*got '4,2'"),
    "repeated": (["--key-indices", "0,2,2"], r"--key-indices: .*got '0,2,2'"),
}


@pytest.mark.parametrize("case", list(BAD_ARGS))
def test_bad_synth_arguments_fail_before_the_model_is_loaded(case, tmp_path, monkeypatch, capsys):
    args, message = BAD_ARGS[case]

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(command, "load_backbone", no_loading)
    code, _, err = run_cli(["synth", "--model", "toy-flow", "--out", str(tmp_path / "d"), *args], capsys)
    assert re.search(message, one_line_error(code, err)), err
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize("args, message", [
    (["--key-indices", "0,3,7"], r"key_indices \[7\] are outside the 6-step grid \(valid 0..6"),
    (["--steps", "4", "--key-indices", "0,6"], r"key_indices \[6\] are outside the 4-step grid"),
])
def test_key_indices_past_the_steps_fail_before_sampling(args, message, teacher_dir, tmp_path, monkeypatch, capsys):
    def no_sampling(*args, **kwargs):
        raise AssertionError("sampled")

    monkeypatch.setattr(writer, "sample_latents", no_sampling)
    code, _, err = run_cli(["synth", "--model", str(teacher_dir / "flow"), "--out", str(tmp_path / "d"), *args],
                           capsys)
    assert re.search(message, one_line_error(code, err)), err
    assert not (tmp_path / "d").exists()


def test_synthesize_checks_its_arguments_too(teacher, tmp_path):
    with pytest.raises(UserError, match=r"key_indices \[6\]: give at least two step indices"):
        synthesize(teacher, PROMPTS, tmp_path, **{**RUN, "key_indices": (6,)})
    with pytest.raises(UserError, match="steps is 0"):
        synthesize(teacher, PROMPTS, tmp_path, **RUN, steps=0)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("make, message", [
    (lambda: TrajectoryData("d", batch_size=0), "data batch_size is 0; it must be at least 1"),
    (lambda: TrajectoryData("d", batch_size=-2), "data batch_size is -2"),
    (lambda: TrajectoryData("d", val_batch_size=0), "data val_batch_size is 0"),
    (lambda: TrajectoryData("d", num_workers=-1), "data num_workers is -1; it must be at least 0"),
    (lambda: ToyVideos(batch_size=0), "data batch_size is 0"),
    (lambda: ToyVideos(num_workers=-1), "data num_workers is -1"),
])
def test_datamodule_sizes_are_checked_when_built(make, message):
    with pytest.raises(UserError, match=message):
        make()


def test_a_zero_batch_size_is_one_line_from_the_cli(data, tmp_path, capsys):
    code, _, err = run_cli(["fit", "--model", "Distillation", "--model.init_args.teacher", "toy-flow",
                            "--model.init_args.objectives", "[{class_path: TrajectoryGuidance}]",
                            "--data", "TrajectoryData", f"--data.init_args.root={data}",
                            "--data.init_args.batch_size=0", f"--trainer.default_root_dir={tmp_path}"], capsys)
    assert one_line_error(code, err).endswith("data batch_size is 0; it must be at least 1")


# -- a full disk ----------------------------------------------------------------------------------------------
NO_SPACE = "No space left on device"
SAFETENSORS_NO_SPACE = f"Error while serializing: I/O error: {NO_SPACE} (os error 28)"  # what safetensors raises


def _disk_full_on_second_shard(monkeypatch, where: str) -> None:
    """Make the write of shard 1 fail as a full disk does: in safetensors (its own error type, as on a real full
    disk, or an OSError without a file name) or in the rename."""
    real_save, real_replace = shards.save_file, os.replace

    def save_file(tensors, path, *args, **kwargs):
        if "shard-00001" in str(path):
            if where == "safetensors":
                raise shards.SafetensorError(SAFETENSORS_NO_SPACE)
            raise OSError(errno.ENOSPC, NO_SPACE)
        return real_save(tensors, path, *args, **kwargs)

    def replace(src, dst, *args, **kwargs):
        if "shard-00001" in str(dst):
            raise OSError(errno.ENOSPC, NO_SPACE, str(src), None, str(dst))
        return real_replace(src, dst, *args, **kwargs)

    if where == "os.replace":
        monkeypatch.setattr(os, "replace", replace)
    else:
        monkeypatch.setattr(shards, "save_file", save_file)


def _synth_args(teacher_dir: Path, tmp_path: Path, out: Path) -> list[str]:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    return ["synth", "--model", str(teacher_dir / "flow"), "--prompts", str(prompts), "--out", str(out),
            "--key-indices", "0,3,6", "--shard-size", "2", "--dtype", "float32"]


def _only_shard_0_is_there(out: Path) -> None:
    assert sorted(p.name for p in out.iterdir()) == ["manifest-r0.json", "shard-00000.safetensors"]  # no temp file
    partial = TrajectoryDataset(out, allow_partial=True)
    assert len(partial) == 2 and partial[1]["latents"].isfinite().all()  # hashed and read: intact


@pytest.mark.parametrize("where", ["safetensors", "save_file", "os.replace"])
def test_a_full_disk_keeps_the_earlier_shards(where, teacher_dir, tmp_path, monkeypatch, capsys):
    out = tmp_path / "d"
    args = _synth_args(teacher_dir, tmp_path, out)
    with monkeypatch.context() as patch:
        _disk_full_on_second_shard(patch, where)
        code, _, err = run_cli(args, capsys)
    reason = SAFETENSORS_NO_SPACE if where == "safetensors" else f"[Errno {errno.ENOSPC}] {NO_SPACE}"
    assert one_line_error(code, err) == f"vdistill: error: cannot write '{out / 'shard-00001.safetensors'}': {reason}"
    _only_shard_0_is_there(out)
    code, _, err = run_cli(args, capsys)  # room again: the same command finishes the set
    assert code == 0, err
    assert verify(out)["complete"]


def test_a_real_full_disk(teacher_dir, tmp_path, capsys):
    """A tmpfs with room for one shard (needs root; skipped elsewhere)."""
    probe = tmp_path / "probe"
    run_cli(_synth_args(teacher_dir, tmp_path, probe), capsys)
    page = 4096
    room = -(-(probe / "shard-00000.safetensors").stat().st_size // page) * page + 3 * page  # + manifest and its temp
    out = tmp_path / "tiny_disk"
    out.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={room}", "tmpfs", str(out)],
                                           capture_output=True).returncode != 0:
        pytest.skip("mounting a tmpfs needs root")
    try:
        code, _, err = run_cli(_synth_args(teacher_dir, tmp_path, out), capsys)
        assert one_line_error(code, err).startswith(
            f"vdistill: error: cannot write '{out / 'shard-00001.safetensors'}': ")
        assert NO_SPACE in err
        _only_shard_0_is_there(out)
    finally:
        subprocess.run(["umount", str(out)], check=True)


def test_a_manifest_naming_a_function_never_runs_it(data, teacher, tmp_path):
    """The teacher record a manifest keeps is compared, never built: a payload there runs nothing."""
    marker = tmp_path / "PWNED"
    payload = {"class_path": "os.system", "init_args": {"command": f"touch {marker}"}}
    for name in ["manifest.json", *(p.name for p in data.glob("manifest-r*.json"))]:
        path = data / name
        manifest = json.loads(path.read_text())
        manifest["settings"]["teacher"] = payload
        path.write_text(json.dumps(manifest))
    assert len(TrajectoryDataset(data)) == 5
    with pytest.raises(UserError, match=r"made by another teacher or with other settings .*teacher"):
        synthesize(teacher, PROMPTS, data, **RUN)
    assert not marker.exists()
