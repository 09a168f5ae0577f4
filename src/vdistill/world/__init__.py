"""The toy world: procedural captioned videos, oracle metrics and ToyBench."""

from vdistill.world.captions import COLOURS, MOTIONS, SHAPES, Caption, all_captions, parse_caption, toy_prompts
from vdistill.world.render import WorldConfig, render, render_batch

__all__ = ["COLOURS", "MOTIONS", "SHAPES", "Caption", "WorldConfig", "all_captions", "parse_caption", "render",
           "render_batch", "toy_prompts"]
