"""AccVideo's noise-aware discriminator (arXiv 2503.19462, Sec. 4.3): the FROZEN teacher as a feature extractor
(one block's output, read with a forward hook) and one small trainable 2D CNN head per key timestep.

The teacher is not a submodule here: the distillation module owns it (registering it twice would save and move
it twice); :meth:`Discriminator.bind` attaches it and builds the heads once the key timesteps are known.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vdistill.backbones.base import Backbone, TextCond
from vdistill.errors import UserError


class DiscriminatorHead(nn.Module):
    """Small per-frame 2D CNN on teacher features ``[B, T, C, h, w]`` -> logits ``[B]``: 1x1 conv (C -> hidden),
    SiLU, 3x3 conv (stride 2 when the map allows), SiLU, 1x1 conv -> one logit per position, mean over positions
    and frames.

    The parameters are owned directly (no sub-modules) and applied with ``torch.nn.functional``, so that
    ``forward(..., detach_params=True)`` reads them detached INSIDE this module's own forward: wrappers that
    gather parameters around a module's forward (DeepSpeed ZeRO-3, FSDP) see an ordinary call either way.
    """

    def __init__(self, in_channels: int, hidden: int = 64) -> None:
        super().__init__()
        self.w_in = nn.Parameter(torch.empty(hidden, in_channels, 1, 1))
        self.b_in = nn.Parameter(torch.empty(hidden))
        self.w_mid = nn.Parameter(torch.empty(hidden, hidden, 3, 3))
        self.b_mid = nn.Parameter(torch.empty(hidden))
        self.w_out = nn.Parameter(torch.empty(1, hidden, 1, 1))
        self.b_out = nn.Parameter(torch.empty(1))
        for w, b in ((self.w_in, self.b_in), (self.w_mid, self.b_mid), (self.w_out, self.b_out)):
            nn.init.kaiming_uniform_(w, a=math.sqrt(5))  # nn.Conv2d's default initialisation
            bound = 1 / math.sqrt(w[0].numel())
            nn.init.uniform_(b, -bound, bound)

    def forward(self, features: Tensor, detach_params: bool = False) -> Tensor:
        p = {n: (v.detach() if detach_params else v) for n, v in self._parameters.items()}
        b, t = features.shape[:2]
        x = features.flatten(0, 1).to(p["w_in"].dtype)
        x = F.silu(F.conv2d(x, p["w_in"], p["b_in"]))
        stride = 2 if min(x.shape[-2:]) >= 4 else 1
        x = F.silu(F.conv2d(x, p["w_mid"], p["b_mid"], stride=stride, padding=1))
        x = F.conv2d(x, p["w_out"], p["b_out"])
        return x.flatten(1).mean(1).unflatten(0, (b, t)).mean(1)


class Discriminator(nn.Module):
    """Noise-aware discriminator: teacher features at key timestep ``t_k`` -> head ``k`` -> one logit per video.

    Args:
        feature_blocks: index into ``teacher.feature_blocks()`` per judged key timestep (negative counts from the
            end), one index for all, or ``None``: the last block for ``t > 0`` and the middle block for the clean
            key point, as in the paper.
        shared_head: one head for all key timesteps (the paper's ablation: per-timestep heads are better).
        hidden: channels of each head.
    """

    def __init__(self, feature_blocks: int | list[int] | None = None, shared_head: bool = False,
                 hidden: int = 64) -> None:
        super().__init__()
        self.feature_blocks = feature_blocks
        self.shared_head = shared_head
        self.hidden = hidden
        self.heads = nn.ModuleList()
        self.key_timesteps: tuple[float, ...] | None = None
        self.blocks: list[int] = []

    # -- construction ------------------------------------------------------------------------------------
    @property
    def bound(self) -> bool:
        return self.key_timesteps is not None

    @property
    def teacher(self) -> Backbone:
        if not self.bound:
            raise RuntimeError("the discriminator is not bound to a teacher yet (call bind)")
        return self._teacher

    def bind(self, teacher: Backbone, key_timesteps: Sequence[float]) -> None:
        """Attach the frozen ``teacher`` and build one head per judged key timestep.

        Args:
            teacher: the frozen teacher (its parameters must not require gradients).
            key_timesteps: the times ``t_1 .. t_{K-1}`` of the key points the discriminator judges (all key points
                but the initial noise), noisiest first.
        """
        times = tuple(float(t) for t in key_timesteps)
        if self.bound:
            if times != self.key_timesteps:
                raise UserError(f"the discriminator was built for key timesteps {list(self.key_timesteps)}, "
                                f"not {list(times)}")
            return
        if any(p.requires_grad for p in teacher.parameters()):
            raise ValueError("the discriminator's teacher must be frozen")
        n_blocks = len(teacher.feature_blocks())
        channels = teacher.feature_channels()
        spec = self.feature_blocks
        if spec is None:  # a middle block judges the clean key point, the last block the noisy ones (Sec. 4.3)
            blocks = [n_blocks // 2 if t <= 0 else n_blocks - 1 for t in times]
        elif isinstance(spec, int):
            blocks = [spec] * len(times)
        else:
            blocks = list(spec)
        if len(blocks) != len(times):
            raise UserError(f"feature_blocks lists {len(blocks)} block indices for {len(times)} key timesteps "
                            f"{list(times)}")
        bad = [i for i in blocks if not -n_blocks <= i < n_blocks]
        if bad:
            raise UserError(f"feature block indices {bad} are outside the teacher's {n_blocks} feature blocks")
        self.blocks = [i % n_blocks for i in blocks]
        if self.shared_head:
            widths = {channels[i] for i in self.blocks}
            if len(widths) != 1:
                raise UserError(f"a shared head needs one feature width, but the chosen blocks have {sorted(widths)}")
            heads = [DiscriminatorHead(widths.pop(), self.hidden)]
        else:
            heads = [DiscriminatorHead(channels[i], self.hidden) for i in self.blocks]
        ref = next(teacher.denoiser.parameters())
        self.heads.extend(h.to(ref.device) for h in heads)
        object.__setattr__(self, "_teacher", teacher)  # a plain reference: not saved, moved or wrapped twice
        self.key_timesteps = times

    # -- evaluation --------------------------------------------------------------------------------------
    def features(self, x: Tensor, t: Tensor, text: TextCond, block: int) -> Tensor:
        """Teacher block ``block``'s output ``[B, T', C, h, w]`` for latents ``x`` ``[B, C, T, H, W]`` at times
        ``t`` ``[B]``: differentiable w.r.t. ``x`` (the teacher's parameters are frozen)."""
        teacher = self.teacher
        captured: list = []
        handle = teacher.feature_blocks()[block].register_forward_hook(lambda _m, _i, out: captured.append(out))
        try:
            # the clean end of a DDPM grid is t = -1 (alpha_bar = 1): the network never saw it, 0 is the nearest
            teacher(x, t.clamp(min=0), text)
        finally:
            handle.remove()
        return teacher.feature_frames(captured[0], x)

    def head(self, j: int) -> DiscriminatorHead:
        return self.heads[0 if self.shared_head else j]

    def logits(self, features: Tensor, j: int, detach_params: bool = False) -> Tensor:
        """Head ``j``'s logits ``[B]`` for features ``[B, T', C, h, w]``; ``detach_params`` reads its parameters
        detached, so the result reaches the input only (the generator's adversarial term)."""
        return self.head(j)(features, detach_params=detach_params)

    def forward(self, x: Tensor, t: Tensor, text: TextCond, j: int, detach_params: bool = False) -> Tensor:
        """Logits ``[B]`` of latents ``x`` ``[B, C, T, H, W]`` at the ``j``-th judged key timestep (times ``t``)."""
        return self.logits(self.features(x, t, text, self.blocks[j]), j, detach_params)

    def extra_repr(self) -> str:
        return f"key_timesteps={self.key_timesteps}, blocks={self.blocks}, shared_head={self.shared_head}"
