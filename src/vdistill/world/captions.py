"""The toy world's vocabulary: 4 colours x 3 shapes x 4 motions = 48 captions "a {colour} {shape} moving {dir}"."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (1.0, 0.0, 0.0),
    "green": (0.0, 1.0, 0.0),
    "blue": (0.0, 0.0, 1.0),
    "yellow": (1.0, 1.0, 0.0),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
MOTIONS: tuple[str, ...] = ("left", "right", "up", "down")
# Unit displacement per motion in image coordinates (x to the right, y downwards).
MOTION_VECTORS: dict[str, tuple[int, int]] = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}


@dataclass(frozen=True)
class Caption:
    colour: str
    shape: str
    motion: str

    @property
    def text(self) -> str:
        return f"a {self.colour} {self.shape} moving {self.motion}"


def all_captions() -> list[Caption]:
    return [Caption(c, s, m) for c, s, m in itertools.product(COLOURS, SHAPES, MOTIONS)]


def toy_prompts() -> list[str]:
    """The 48 toy prompts in a fixed order (colour, then shape, then motion)."""
    return [c.text for c in all_captions()]


def parse_caption(text: str) -> Caption | None:
    """The caption's attributes, or ``None`` when ``text`` is not a toy caption."""
    words = text.strip().lower().split()
    if len(words) != 5 or words[0] != "a" or words[3] != "moving":
        return None
    colour, shape, motion = words[1], words[2], words[4]
    if colour not in COLOURS or shape not in SHAPES or motion not in MOTIONS:
        return None
    return Caption(colour, shape, motion)
