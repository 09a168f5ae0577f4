"""Periodic evaluation on a fixed prompt set: ToyBench in the toy world, critic scores elsewhere."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import nn

from vdistill.callbacks.periodic import PeriodicSampling
from vdistill.critics import available_critics
from vdistill.errors import UserError, unknown_choice
from vdistill.sampling.generate import Generated
from vdistill.world.captions import parse_caption
from vdistill.world.toybench import METRICS, evaluate


class PeriodicEvaluation(PeriodicSampling):
    """ToyBench / critic scores of the student on a fixed prompt set every N steps (``eval/*`` curves).

    Every ``every_n_steps`` optimizer steps (and at the end of ``fit``), sample the student on a fixed prompt set
    with fixed seeds and log what can be measured on it, under ``prefix/``:

    - ToyBench (toy captions): ``eval/semantic``, ``eval/quality`` and the accuracies ``eval/colour``,
      ``eval/shape``, ``eval/motion``;
    - critics: ``eval/<name>``, the mean score of video ``i`` against prompt ``i`` (HPSv2, PickScore, ViCLIP, ...).

    Metrics go to every logger at the step and to ``trainer.callback_metrics`` (so a sweep reads the final ones);
    each evaluation is also written to ``<log_dir>/eval/step_XXXXXX.json`` (ToyBench per prompt included). Sampling
    is the student's own (see :class:`~vdistill.callbacks.periodic.PeriodicSampling`), with the EMA weights when an
    :class:`~vdistill.callbacks.ema.EMA` callback is present.

    Args:
        every_n_steps: evaluate every this many optimizer steps.
        prompts: ``None`` (12 toy captions balanced over colour, shape and motion), ``"toy"`` (all 48), a prompt
            file or a list of prompts.
        repeat: videos per prompt (each its own seed); 2 x 12 toy videos take well under a second for a 2-step
            toy student on CPU.
        toybench: score with ToyBench; ``None``: when every prompt is a toy caption.
        critics: ``None``: the module's own critics (``model.critics`` of a reward-feedback run), if any; a list
            of critic names or ``{name: spec}`` as ``model.critics`` takes them
            (:func:`~vdistill.critics.build.build_critics`: ``{hpsv2: {checkpoint: HPS_v2.1_compressed.pt}}``);
            ``[]``: none.
        prefix: the metric prefix.
        **kwargs: ``seed``, ``steps``, ``guidance``, ``batch_size``, ``attr``, ``at_start``, ``at_end`` of
            :class:`~vdistill.callbacks.periodic.PeriodicSampling`.
    """

    def __init__(self, every_n_steps: int = 250, prompts: Sequence[str] | str | None = None, repeat: int = 2,
                 toybench: bool | None = None, critics: Mapping[str, Any] | Sequence[str] | None = None,
                 prefix: str = "eval", seed: int = 0, steps: int | None = None, guidance: float | None = None,
                 batch_size: int = 16, attr: str | None = None, at_start: bool = False, at_end: bool = True) -> None:
        super().__init__(every_n_steps, prompts, repeat, seed, steps, guidance, batch_size, attr, at_start, at_end)
        toy = [parse_caption(p) is not None for p in self.prompts]
        if toybench and not all(toy):
            bad = self.prompts[toy.index(False)]
            raise UserError(f"PeriodicEvaluation: toybench is on but prompt {bad!r} is not a toy caption "
                            "('a {colour} {shape} moving {direction}'); set toybench: null or use toy prompts")
        self.toybench = all(toy) if toybench is None else bool(toybench)
        self.critic_specs = critics
        if critics is not None:
            names = critics.items() if isinstance(critics, Mapping) else ((str(n), None) for n in critics)
            for name, spec in names:
                registered = spec.get("critic", name) if isinstance(spec, Mapping) else name
                if registered not in available_critics():
                    raise unknown_choice("critic", registered, available_critics())
        self.prefix = prefix
        self._critics: nn.ModuleDict | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        own = getattr(pl_module, "critics", None)
        if not self.toybench and not (self.critic_specs or (self.critic_specs is None and own)):
            raise UserError("PeriodicEvaluation has nothing to measure: the prompts are not toy captions and no "
                            f"critic is configured; set critics to names from: {', '.join(available_critics())}")

    def critics(self, pl_module: L.LightningModule) -> nn.ModuleDict:
        """The critics that score the samples (built on first use, on the module's device)."""
        if self._critics is None:
            if self.critic_specs is None:
                self._critics = getattr(pl_module, "critics", None) or nn.ModuleDict()
            else:
                from vdistill.critics.build import build_critics

                self._critics = build_critics(self.critic_specs).to(pl_module.device)
        return self._critics

    @torch.no_grad()
    def measure(self, gen: Generated, pl_module: L.LightningModule) -> tuple[dict[str, float], dict[str, Any]]:
        """``({metric name: value}, json record)`` of the sampled videos ``[N, T, 3, H, W]``."""
        metrics: dict[str, float] = {}
        record: dict[str, Any] = {"prompts": gen.prompts, "seconds": gen.seconds}
        if self.toybench:
            res = evaluate(gen.videos, gen.prompts)
            metrics.update({f"{self.prefix}/{m}": float(res.overall[m]) for m in METRICS})
            record["toybench"] = res.to_json()
        for name, critic in self.critics(pl_module).items():
            scores = [critic(gen.videos[i: i + self.batch_size].to(critic.device),
                             gen.prompts[i: i + self.batch_size]).float().cpu()
                      for i in range(0, len(gen.prompts), self.batch_size)]
            metrics[f"{self.prefix}/{name}"] = float(torch.cat(scores).mean())
        record["metrics"] = metrics
        return metrics, record

    def run(self, trainer: L.Trainer, pl_module: L.LightningModule, step: int) -> dict[str, float]:
        gen = self.sample(trainer, pl_module)
        device = pl_module.device
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(self.seed)  # image critics pick random frames: the same ones at every evaluation
            metrics, record = self.measure(gen, pl_module)
        path = self.step_dir(self.prefix, step).with_suffix(".json")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"step": step, **record}, indent=2))
        shown = ", ".join(f"{k.split('/', 1)[1]} {v:.3f}" for k, v in metrics.items())
        rank_zero_info(f"step {step}: {self.prefix} on {len(gen.prompts)} videos: {shown}")
        return metrics
