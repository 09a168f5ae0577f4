"""Prompt lists: ``toy`` (the 48 toy captions) or a text file with one prompt a line."""

from __future__ import annotations

from pathlib import Path

from vdistill.errors import UserError
from vdistill.world.captions import toy_prompts


def load_prompts(spec: str, repeat: int = 1) -> list[str]:
    """Prompts from ``spec`` (``toy`` or a file path), each repeated ``repeat`` times in a row."""
    if spec == "toy":
        prompts = toy_prompts()
    else:
        path = Path(spec)
        if not path.is_file():
            raise UserError(f"prompt file {spec!r} does not exist; give a text file (one prompt a line) or 'toy'")
        prompts = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        if not prompts:
            raise UserError(f"prompt file {spec!r} has no prompts")
    return [p for p in prompts for _ in range(repeat)]
