"""The toy world: procedural captioned videos, oracle metrics and ToyBench."""

from vdistill.world.captions import COLOURS, MOTIONS, SHAPES, Caption, all_captions, parse_caption, toy_prompts
from vdistill.world.oracle import OracleReading, oracle, oracle_batch
from vdistill.world.render import WorldConfig, render, render_batch
from vdistill.world.toybench import ToyBench, ToyBenchResult, format_table

__all__ = ["COLOURS", "MOTIONS", "SHAPES", "Caption", "WorldConfig", "all_captions", "parse_caption", "render",
           "render_batch", "toy_prompts", "OracleReading", "oracle", "oracle_batch", "ToyBench", "ToyBenchResult",
           "format_table"]
