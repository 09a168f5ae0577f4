"""Memory per rank under a recipe's strategy and precision, from parameter counts and a traced step.

Resident: the weights of every module (teacher, student, discriminator heads, critics, fake score: each parameter
once, shared parts once), the trainable parameters' gradients and AdamW state, as the strategy keeps them:

* ``single`` / ``ddp``: everything whole on every rank, in the dtype it was loaded in; gradients and AdamW's two
  moments in the parameter's dtype (torch's AdamW keeps its state like the parameter); DDP's gradient buckets are
  views of the gradients (the recipes' ``gradient_as_bucket_view: true``), else one more gradient copy;
* ``deepspeed_zero2``: with 16-bit precision DeepSpeed casts every module to it (2 B a weight) and keeps an fp32
  master copy with the two moments in the optimizer (12 B a trainable parameter), optimizer state and 16-bit
  gradients sharded over the ranks; plus its reduce and all-gather buckets (Lightning's defaults 2e8 elements each);
* ``deepspeed_zero3``: the same, with every weight sharded too; plus the parameters gathered in flight (at most
  ``stage3_max_live_parameters``, DeepSpeed's default 1e9 elements, bounded by the largest denoiser);
* ``fsdp``: weights, gradients and AdamW state sharded over the ranks in their own dtypes; one wrapped block of the
  denoiser gathered whole at a time (two with prefetch).

Activations: the traced step's peak (:class:`~vdistill.profile.counter.StepCounter`), which no strategy here shards;
an EMA of the student's trainable weights (``target_ema_decay``) is one float32 copy of them.
The predicted peak adds the step's activations to the resident memory; gradients that appear while activations are
freed in the backward make it an upper bound by at most the gradients' size.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from torch import nn

from vdistill.profile.recipe import DEEPSPEED_BUCKETS, Recipe

GIB = 1024**3
DEEPSPEED_MAX_LIVE = 1e9  # stage3_max_live_parameters, DeepSpeed's default


@dataclass
class Memory:
    """Bytes per rank."""

    weights: float
    gradients: float
    optimizer: float
    buffers: float
    activations: float
    activations_no_checkpointing: float | None = None
    ema: float = 0.0

    @property
    def peak(self) -> float:
        return self.weights + self.gradients + self.optimizer + self.buffers + self.ema + self.activations

    def as_dict(self) -> dict:
        return {**asdict(self), "peak": self.peak}


def unique_parameters(modules: list[nn.Module | None]) -> list[nn.Parameter]:
    seen: dict[int, nn.Parameter] = {}
    for m in modules:
        if m is not None:
            for p in m.parameters():
                seen.setdefault(id(p), p)
    return list(seen.values())


def largest_block(module: nn.Module) -> int:
    """Parameters of the largest child of the denoiser's block lists (what FSDP / ZeRO-3 gather at once)."""
    sizes = [sum(p.numel() for p in block.parameters())
             for child in module.children() if isinstance(child, nn.ModuleList) for block in child]
    return max(sizes, default=sum(p.numel() for p in module.parameters()))


def per_rank(recipe: Recipe, params: list[nn.Parameter], devices: int, activations: float,
             block_params: int, ema_bytes: float = 0.0, sizes: dict[int, int] | None = None) -> Memory:
    """Resident bytes per rank of ``params`` (each once, with its ``requires_grad`` and dtype) under the recipe's
    strategy on ``devices`` ranks, plus ``activations``. ``sizes``: bytes per element by ``id(param)``, as the
    parameters are held in training (before the trace's cast to the autocast dtype: ``bf16-mixed`` keeps each
    parameter in its own dtype); default their current element size."""
    frozen = [p for p in params if not p.requires_grad]
    trained = [p for p in params if p.requires_grad]
    size = (lambda p: sizes.get(id(p), p.element_size())) if sizes else (lambda p: p.element_size())
    n_all = sum(p.numel() for p in params)
    n_trained = sum(p.numel() for p in trained)
    own_bytes = sum(p.numel() * size(p) for p in params)
    trained_bytes = sum(p.numel() * size(p) for p in trained)
    half = recipe.precision.startswith(("bf16", "16"))
    strategy = recipe.strategy
    if strategy == "deepspeed":
        w = 2 if half else 4
        stage = recipe.zero_stage or 2
        weights = n_all * w / (devices if stage >= 3 else 1)
        gradients = n_trained * w / devices
        optimizer = n_trained * (12 if half else 8) / devices
        buckets = sum(float(recipe.strategy_args.get(k, v)) for k, v in DEEPSPEED_BUCKETS.items()) * w
        if stage >= 3:
            buckets += min(DEEPSPEED_MAX_LIVE, 2 * block_params) * w
        return Memory(weights, gradients, optimizer, buckets, activations, ema=ema_bytes)
    if strategy == "fsdp":
        gathered = 2 * block_params * (own_bytes / max(n_all, 1))
        return Memory(own_bytes / devices + gathered, trained_bytes / devices, 2 * trained_bytes / devices, 0.0,
                      activations, ema=ema_bytes)
    buckets = 0.0
    if strategy == "ddp" and not recipe.strategy_args.get("gradient_as_bucket_view", False):
        buckets = trained_bytes
    del frozen
    return Memory(own_bytes, trained_bytes, 2 * trained_bytes, buckets, activations, ema=ema_bytes)
