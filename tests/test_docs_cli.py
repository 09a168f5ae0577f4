"""docs/cli.md against the commands' own argparse parsers: every command has a section, its options table lists
every long flag with the parser's default, the section names no flag the command lacks, and its examples parse."""

from __future__ import annotations

import argparse
import functools
import importlib
import re
import shlex
from pathlib import Path

import pytest

from vdistill import cli

PAGE = Path(__file__).resolve().parents[1] / "docs" / "cli.md"
COMMANDS = ["list", *cli.COMMANDS]
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")


class _Built(Exception):
    """Raised by the patched ``parse_args``: carries the parser a command built, before it parses anything."""


@functools.cache
def parser_of(command: str) -> argparse.ArgumentParser:
    """The command's parser, with ``RANK`` / ``WORLD_SIZE`` unset (defaults read from them)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("RANK", raising=False)
        mp.delenv("WORLD_SIZE", raising=False)
        if command == "list":
            run = cli.cmd_list
        else:
            module = importlib.import_module(cli.COMMANDS[command])
            if hasattr(module, "build_parser"):
                return module.build_parser()
            run = module.run
        # bench, demo, critic-report, sweep, profile and list build their parser inside run(): stop it there

        def stop(self, *args, **kwargs):
            raise _Built(self)

        mp.setattr(argparse.ArgumentParser, "parse_args", stop)
        try:
            run([])
        except _Built as built:
            return built.args[0]
    raise AssertionError(f"vdistill {command} returned without parsing its arguments")


def long_flags(parser: argparse.ArgumentParser) -> set[str]:
    return {s for a in parser._actions for s in a.option_strings if s.startswith("--")} - {"--help"}


def section(command: str) -> str:
    text = PAGE.read_text()
    heading = f"\n### `vdistill {command}`\n"
    assert heading in text, f"docs/cli.md has no section {heading.strip()!r}"
    body = text[text.index(heading) + len(heading):]
    end = re.search(r"\n#{2,3} ", body)  # not "\n# ": a bash comment
    return body[: end.start()] if end else body


def examples(body: str) -> list[list[str]]:
    """The ``vdistill`` command lines of the section's bash blocks, as argument lists (``vdistill`` dropped)."""
    blocks = [re.sub(r"\\\n\s*", " ", block) for block in re.findall(r"```bash\n(.*?)```", body, flags=re.S)]
    return [shlex.split(line)[1:] for block in blocks for line in block.splitlines() if line.startswith("vdistill ")]


def own_text(command: str, body: str) -> str:
    """The section without its example lines of other commands (the preprocess example samples its clips)."""
    body = re.sub(r"\\\n\s*", " ", body)
    return "\n".join(line for line in body.splitlines()
                     if not line.startswith("vdistill ") or line.startswith(f"vdistill {command} "))


def table_rows(body: str) -> dict[str, list[str]]:
    """``{flag: [cells]}`` of the options table: every flag of a row's first cell maps to that row."""
    rows = {}
    for line in body.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.startswith("| `") else []
        for flag in FLAG.findall(cells[0] if cells else ""):
            rows[flag] = cells
    return rows


def default_text(value: object) -> str | None:
    """How the page writes a parser default; None for those it describes in words (None, flags, lists)."""
    if isinstance(value, bool) or value is None or isinstance(value, list):
        return None
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    return str(value)


def test_every_command_has_a_section_and_no_section_is_stale():
    headings = re.findall(r"^### `vdistill ([\w-]+)`$", PAGE.read_text(), flags=re.M)
    assert sorted(headings) == sorted(COMMANDS)


@pytest.mark.parametrize("command", COMMANDS)
def test_the_options_table_matches_the_parser(command):
    parser, body = parser_of(command), section(command)
    rows = table_rows(body)
    assert set(rows) == long_flags(parser), f"vdistill {command}: the table's flags differ from the parser's"
    unknown = set(FLAG.findall(own_text(command, body))) - long_flags(parser) - {"--help"}
    assert not unknown, f"the section of vdistill {command} names flags it does not have: {sorted(unknown)}"
    for action in parser._actions:
        want = default_text(action.default)
        flag = next((s for s in action.option_strings if s.startswith("--")), None)
        if flag in rows and want is not None:
            assert want in rows[flag][1], f"vdistill {command} {flag}: default {want!r} not in {rows[flag][1]!r}"


@pytest.mark.parametrize("command", COMMANDS)
def test_the_examples_parse(command):
    lines = examples(section(command))
    assert [args for args in lines if args[0] == command], f"the section of vdistill {command} has no example"
    for args in lines:
        parser_of(args[0]).parse_args(args[1:])

