"""Bad arguments of ``sample`` / ``bench`` and bad prompt files: one line, exit 2, before any model is loaded."""

from __future__ import annotations

import re

import pytest
import yaml
from cli_helpers import run_cli

from vdistill.cli import COMMANDS
from vdistill.data.prompts import load_prompts
from vdistill.errors import UserError


@pytest.fixture
def no_model(monkeypatch):
    """Fail the test if a command loads a model: the checks must come first."""
    def load_backbone(*args, **kwargs):
        pytest.fail("a model was loaded before the bad argument was refused")

    for module in ("vdistill.commands.sample", "vdistill.commands.bench", "vdistill.commands.synth"):
        monkeypatch.setattr(f"{module}.load_backbone", load_backbone)


@pytest.fixture
def prompts(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("a red circle moving left\na blue square moving up\n")
    return path


def refused(args: list[str], capsys) -> str:
    code, _, err = run_cli(args, capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize("flag, value, message", [
    ("--steps", "0", r"--steps must be an integer >= 1 or unset, got 0"),
    ("--steps", "-3", r"--steps must be an integer >= 1 or unset, got -3"),
    ("--repeat", "0", r"--repeat \(videos per prompt\) must be an integer >= 1, got 0"),
    ("--repeat", "-2", r"--repeat .* got -2"),
    ("--batch-size", "0", r"--batch-size must be an integer >= 1, got 0"),
    ("--batch-size", "-1", r"--batch-size must be an integer >= 1, got -1"),
    ("--mp4", "-2", r"--mp4 must be an integer >= -1, got -2"),
    ("--seed", "-1", r"--seed must be an integer in \[0, 2\*\*63 - 2\]"),
    ("--seed", str(2**63 - 1), r"--seed must be an integer in \[0, 2\*\*63 - 2\]"),
    ("--frames", "0", r"--frames must be an integer >= 1 or unset, got 0"),
    ("--height", "-16", r"--height must be an integer >= 1 or unset, got -16"),
    ("--width", "0", r"--width must be an integer >= 1 or unset, got 0"),
    ("--dtype", "int8", r"unknown dtype 'int8'; valid choices: bf16, bfloat16, float16, float32, fp16, fp32"),
])
def test_sample_refuses_bad_numbers(flag, value, message, prompts, tmp_path, capsys, no_model):
    line = refused(["sample", "--model", "toy-flow", "--prompts", str(prompts), "--out", str(tmp_path / "s"),
                    flag, value], capsys)
    assert re.search(message, line), line
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("content, message", [
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", r"is not UTF-8 text: byte 0 is 0x89"),
    (b"a red circle moving left\n" + b"\xff\xfe", r"is not UTF-8 text: byte 25 is 0xff"),
    (b"a red circle\x00\x00 moving left\n", r"is not a text file: byte 12 is NUL"),
    (b"\n  \n", r"has no prompts"),
])
def test_sample_refuses_binary_or_empty_prompt_files(content, message, tmp_path, capsys, no_model):
    path = tmp_path / "prompts.bin"
    path.write_bytes(content)
    line = refused(["sample", "--model", "toy-flow", "--prompts", str(path), "--out", str(tmp_path / "s")], capsys)
    assert f"prompt file {str(path)!r}" in line and re.search(message, line), line


def test_prompt_file_that_is_a_folder_or_missing(tmp_path, capsys, no_model):
    line = refused(["sample", "--model", "toy-flow", "--prompts", str(tmp_path), "--out", "x"], capsys)
    assert f"prompt file {str(tmp_path)!r} is a folder, not a text file" in line
    line = refused(["sample", "--model", "toy-flow", "--prompts", str(tmp_path / "no.txt"), "--out", "x"], capsys)
    assert "does not exist; give a text file (one prompt a line) or 'toy'" in line


@pytest.mark.parametrize("flag, value, message", [
    ("--frames", "0", r"--frames must be an integer >= 1 or unset, got 0"),
    ("--width", "-8", r"--width must be an integer >= 1 or unset, got -8"),
    ("--model-dtype", "int8", r"unknown dtype 'int8'; valid choices: .*bfloat16"),
])
def test_synth_refuses_bad_sizes_and_model_dtypes(flag, value, message, prompts, tmp_path, capsys, no_model):
    line = refused(["synth", "--model", "toy-flow", "--prompts", str(prompts), "--out", str(tmp_path / "d"),
                    flag, value], capsys)
    assert re.search(message, line), line
    assert not (tmp_path / "d").exists()


def test_sample_refuses_an_output_path_that_is_a_file(prompts, tmp_path, capsys, no_model):
    (tmp_path / "s").write_text("not a folder")
    line = refused(["sample", "--model", "toy-flow", "--prompts", str(prompts), "--out", str(tmp_path / "s")],
                   capsys)
    assert f"--out {str(tmp_path / 's')!r} is a file, not a folder" in line


def test_sample_steps_are_taken_as_given(prompts, tmp_path, capsys):
    code, out, err = run_cli(["sample", "--model", "toy-flow", "--prompts", str(prompts), "--out",
                              str(tmp_path / "s"), "--steps", "1", "--mp4", "0"], capsys)
    assert code == 0, err
    assert "(1 steps" in out
    code, out, err = run_cli(["sample", "--model", "toy-flow", "--prompts", str(prompts), "--out",
                              str(tmp_path / "s"), "--steps", "2", "--mp4", "0", "--repeat", "2"], capsys)
    assert code == 0 and "4 videos" in out and "(2 steps" in out


@pytest.mark.parametrize("repeat", [0, -1, True, 1.5, "2"])
def test_load_prompts_needs_a_positive_repeat(repeat):
    with pytest.raises(UserError, match=r"repeat \(videos per prompt\) must be an integer >= 1"):
        load_prompts("toy", repeat=repeat)


ROWS = [{"name": "a", "model": "toy-flow", "steps": 1}]


@pytest.mark.parametrize("spec, message", [
    ({"repeat": 0}, r"'repeat' \(videos per prompt\) must be an integer >= 1, got 0"),
    ({"repeat": "4"}, r"'repeat' .* got '4'"),
    ({"repeat": True}, r"'repeat' .* got True"),
    ({"batch_size": 0}, r"'batch_size' must be an integer >= 1, got 0"),
    ({"batch_size": 2.5}, r"'batch_size' must be an integer >= 1, got 2.5"),
    ({"mp4": -2}, r"'mp4' must be an integer >= -1, got -2"),
    ({"mp4": "all"}, r"'mp4' must be an integer >= -1, got 'all'"),
    ({"seed": -1}, r"'seed' must be an integer in \[0, 2\*\*63 - 48\]"),
    ({"seed": "x"}, r"'seed' must be an integer"),
    ({"rows": [{**ROWS[0], "steps": 0}]}, r"'steps' of row 'a' must be an integer >= 1 or unset, got 0"),
    ({"rows": [{**ROWS[0], "steps": "fast"}]}, r"'steps' of row 'a' must be an integer >= 1 or unset, got 'fast'"),
    ({"rows": [{**ROWS[0], "cfg": "high"}]}, r"'cfg' of row 'a' must be a number, got 'high'"),
    ({"rows": [{**ROWS[0], "frames": 0}]}, r"row 'a': 'frames' must be an integer >= 1 or unset, got 0"),
    ({"rows": [{**ROWS[0], "dtype": "int8"}]}, r"row 'a': unknown dtype 'int8'; valid choices: .*bfloat16"),
    ({"rows": [{**ROWS[0], "dtype": 16}]}, r"row 'a': 'dtype' must be a dtype name such as bfloat16, got 16"),
    ({"height": "tall"}, r"'height' must be an integer >= 1 or unset, got 'tall'"),
    ({"dtype": "half-ish"}, r"unknown dtype 'half-ish'"),
    ({"rows": [{**ROWS[0], "model": 3}]}, r"'model' of row 'a' must be a shipped model name or a path"),
    ({"rows": [{**ROWS[0], "name": "../../elsewhere"}]}, r"row name '../../elsewhere' must be a folder name"),
    ({"rows": {"a": "toy-flow"}}, r"'rows' must be a non-empty list of rows"),
    ({"rows": []}, r"'rows' must be a non-empty list of rows"),
    ({"rows": ["toy-flow"]}, r"each bench row must be a mapping \{name, model, ...\}, got 'toy-flow'"),
    ({"prompts": 5}, r"'prompts' must be a string, got 5"),
    ({"out": ["a"]}, r"'out' must be a string, got \['a'\]"),
    ({"device": 0}, r"'device' must be a string, got 0"),
    ({"reference": 1}, r"'reference' must be a row name, got 1"),
])
def test_bench_refuses_bad_values(spec, message, tmp_path, capsys, no_model):
    path = tmp_path / "rows.yaml"
    path.write_text(yaml.safe_dump({"out": str(tmp_path / "out"), "rows": ROWS, **spec}))
    line = refused(["bench", str(path)], capsys)
    assert str(path) in line and re.search(message, line), line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("text, message", [
    ("rows:\n  - {name: a, model: toy-flow\nout: x\n",
     r"is not valid YAML at line 3, column 4: expected ',' or '}', but got ':'"),
    ("out: [x\n", r"is not valid YAML at line 2, column 1: "),
    ("- {name: a, model: toy-flow}\n", r"must be a mapping of keys \(.*rows.*\), got a list"),
    ("just text\n", r"must be a mapping of keys .*, got a str"),
])
def test_bench_refuses_bad_yaml(text, message, tmp_path, capsys, no_model):
    path = tmp_path / "rows.yaml"
    path.write_text(text)
    line = refused(["bench", str(path)], capsys)
    assert f"bench file {str(path)!r}" in line and re.search(message, line), line


def test_bench_refuses_binary_files_and_flags(tmp_path, capsys, no_model):
    path = tmp_path / "rows.yaml"
    path.write_bytes(b"\x1f\x8b\x08\x00 gzip")
    assert "is not UTF-8 text: byte 1 is 0x8b" in refused(["bench", str(path)], capsys)
    line = refused(["bench", str(tmp_path)], capsys)
    assert f"bench file {str(tmp_path)!r} is a folder" in line
    path.write_text(yaml.safe_dump({"out": str(tmp_path / "out"), "rows": ROWS}))
    assert "--mp4 must be an integer >= -1, got -5" in refused(["bench", str(path), "--mp4", "-5"], capsys)
    (tmp_path / "out" / "samples" / "a").mkdir(parents=True)
    (tmp_path / "out" / "samples" / "a" / "keep.txt").write_text("x")
    line = refused(["bench", str(path)], capsys)
    assert "samples folder of row 'a'" in line and "'keep.txt'" in line


@pytest.mark.parametrize("command", ["list", *COMMANDS])
def test_every_command_refuses_an_unknown_flag_in_one_line(command, capsys, no_model):
    """One line naming the command (exit 2), not argparse's usage block: the unknown flag, or first the arguments
    the command requires."""
    line = refused([command, "--no-such-flag"], capsys)
    assert line.startswith(f"vdistill: error: vdistill {command}"), line
    assert "--no-such-flag" in line or "required" in line or "needs" in line, line
