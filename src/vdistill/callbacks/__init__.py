"""Lightning callbacks of vdistill, appended from the YAML fragments in the top-level ``callbacks/`` folder.

- ``ema.yaml``: :class:`EMA`, an EMA of the student's trainable weights (checkpointed; used by evaluation,
  samples and the export);
- ``video_samples.yaml``: :class:`VideoSamples`, GIF grid + mp4s of the student in the run folder and TensorBoard;
- ``toybench_eval.yaml``: :class:`PeriodicEvaluation`, ToyBench / critic scores on fixed prompts (``eval/*``);
- ``adapter_checkpoints.yaml``: :class:`PeriodicCheckpoints`, checkpoints every N steps + ``last.ckpt`` in the
  run folder (adapter-only for LoRA students);
- ``throughput.yaml``: :class:`ThroughputMemory`, steps/s, samples/s and peak memory (``perf/*``).

:class:`ExportBackbone` (in the recipes themselves) writes the folder ``vdistill sample --model`` loads.
"""

from vdistill.callbacks.checkpoints import PeriodicCheckpoints
from vdistill.callbacks.ema import EMA, use_ema
from vdistill.callbacks.evaluation import PeriodicEvaluation
from vdistill.callbacks.export import ExportBackbone
from vdistill.callbacks.periodic import SMALL_TOY_PROMPTS, PeriodicSampling
from vdistill.callbacks.throughput import ThroughputMemory
from vdistill.callbacks.video_samples import VideoSamples, log_gif

__all__ = ["EMA", "ExportBackbone", "PeriodicCheckpoints", "PeriodicEvaluation", "PeriodicSampling",
           "SMALL_TOY_PROMPTS", "ThroughputMemory", "VideoSamples", "log_gif", "use_ema"]
