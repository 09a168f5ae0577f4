"""Diversity reaches the reports: ``vdistill bench`` against its reference row (n/a with one video per prompt),
``vdistill sample --repeat`` against rendered clips, each saying which reference it used."""

from __future__ import annotations

import json

import pytest
import yaml
from cli_helpers import run_cli

from vdistill.world.toybench import DATA_REFERENCE

PROMPTS = ["a red circle moving left", "a blue square moving up", "a green triangle moving down"]


@pytest.fixture
def prompt_file(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("\n".join(PROMPTS) + "\n")
    return path


def _bench(tmp_path, prompt_file, capsys, repeat: int) -> tuple[dict, str, str]:
    spec = {"out": str(tmp_path / f"out{repeat}"), "prompts": str(prompt_file), "repeat": repeat, "mp4": 0,
            "reference": "two", "rows": [{"name": "two", "model": "toy-flow", "steps": 2},
                                         {"name": "one", "model": "toy-flow", "steps": 1}]}
    (tmp_path / "rows.yaml").write_text(yaml.safe_dump(spec))
    code, out, err = run_cli(["bench", str(tmp_path / "rows.yaml")], capsys)
    assert code == 0, err
    saved = json.loads((tmp_path / f"out{repeat}" / "toybench.json").read_text())
    return saved, (tmp_path / f"out{repeat}" / "toybench.md").read_text(), out


def test_bench_reports_diversity_against_its_reference_row(tmp_path, prompt_file, capsys) -> None:
    saved, table, printed = _bench(tmp_path, prompt_file, capsys, repeat=3)
    ref, other = saved["two"], saved["one"]
    assert ref["diversity"] == 1.0 and ref["diversity reference"] == "row 'two'"
    assert ref["spread"]["videos"] == 9 and ref["spread"]["prompts"] == 3
    position = other["spread"]["position"] / ref["spread"]["position"]
    assert other["diversity"] == pytest.approx((position + other["spread"]["size"] / ref["spread"]["size"]) / 2)
    assert other["diversity"] > 0 and other["diversity"] != other["diversity (data)"]
    assert ref["diversity se"] == 0.0 and other["diversity se"] > 0 and other["diversity (data) se"] > 0
    row_json = json.loads((tmp_path / "out3" / "samples" / "one" / "toybench.json").read_text())
    assert row_json["diversity"]["reference"] == DATA_REFERENCE  # each row's own file: against rendered clips
    assert row_json["diversity"]["diversity"] == pytest.approx(other["diversity (data)"])
    header = table.splitlines()[0]
    assert header.startswith("| model | steps | cfg | semantic | quality | diversity | colour |")
    assert "spread" not in header and "over that of row 'two'" in table and "over that of row 'two'" in printed


def test_bench_with_one_video_per_prompt_says_not_applicable(tmp_path, prompt_file, capsys) -> None:
    saved, table, _ = _bench(tmp_path, prompt_file, capsys, repeat=1)
    assert saved["two"]["diversity"] is None and saved["one"]["spread"] is None
    assert saved["one"]["diversity se"] is None and saved["one"]["diversity (data)"] is None
    rows = [line for line in table.splitlines() if line.startswith("| one |") or line.startswith("| two |")]
    assert len(rows) == 2 and all(line.split(" | ")[5] == "n/a" for line in rows), rows


def test_sample_with_repeats_reports_diversity_against_rendered_clips(tmp_path, prompt_file, capsys) -> None:
    code, out, err = run_cli(["sample", "--model", "toy-flow", "--steps", "2", "--prompts", str(prompt_file),
                              "--repeat", "3", "--mp4", "0", "--out", str(tmp_path / "s")], capsys)
    assert code == 0, err
    record = json.loads((tmp_path / "s" / "toybench.json").read_text())["diversity"]
    assert record["reference"] == DATA_REFERENCE and record["reference_spread"]["videos"] == 3 * 32
    assert record["diversity"] == pytest.approx((record["position"] + record["size"]) / 2) and record["diversity"] > 0
    assert record["se"] > 0
    assert "| diversity |" in out
