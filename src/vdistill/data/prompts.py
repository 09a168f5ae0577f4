"""Prompt lists: ``toy`` (the 48 toy captions) or a UTF-8 text file with one prompt a line.

A bad list is refused in one line (:class:`~vdistill.errors.UserError`) before any model is loaded: a missing
file, a folder, a binary file (the byte offset that is not UTF-8, or a NUL byte), a file without prompts, and a
``repeat`` that is not an integer >= 1.
"""

from __future__ import annotations

import os

from vdistill.errors import UserError
from vdistill.files import read_text
from vdistill.world.captions import toy_prompts

HINT = "; give a text file (one prompt a line) or 'toy'"


def check_repeat(repeat: object, what: str = "repeat") -> int:
    """``repeat`` (videos per prompt) if it is an integer >= 1, else one line naming ``what``."""
    if isinstance(repeat, bool) or not isinstance(repeat, int) or repeat < 1:
        raise UserError(f"{what} (videos per prompt) must be an integer >= 1, got {repeat!r}")
    return repeat


def load_prompts(spec: str | os.PathLike, repeat: int = 1) -> list[str]:
    """Prompts from ``spec`` (``toy`` or a file path), each repeated ``repeat`` times in a row."""
    check_repeat(repeat)
    spec = os.fspath(spec) if isinstance(spec, os.PathLike) else spec
    if not isinstance(spec, str):
        raise UserError(f"prompts must be 'toy' or the path of a text file, got {spec!r}")
    if spec == "toy":
        prompts = toy_prompts()
    else:
        text = read_text(spec, "prompt file", HINT)
        prompts = [line.strip() for line in text.splitlines() if line.strip()]
        if not prompts:
            raise UserError(f"prompt file {spec!r} has no prompts")
    return [p for p in prompts for _ in range(repeat)]
