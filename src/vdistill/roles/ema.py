"""An exponential moving average of a model's TRAINABLE parameters, run in place of the model's own weights.

The consistency target network of latent consistency distillation (LCM, T2V-Turbo: ``theta^- <- mu theta^- +
(1 - mu) theta`` with ``mu = 0.95``). Only the trainable parameters are averaged: for a LoRA student that is the
adapters and the guidance projection, the frozen base weights are shared with the student (and the teacher), so
the target costs no copy of the network. Lightning's ``EMAWeightAveraging`` would copy the whole module, frozen
teacher included (Lightning 2.6, ``lightning.pytorch.callbacks.WeightAveraging``).

The average runs through :func:`torch.func.functional_call`: the student's own parameters are never swapped in
place, so computing the target in the middle of a step cannot corrupt the student's autograd graph.

The update is torch's own (``torch.optim.swa_utils.get_ema_multi_avg_fn``: one ``_foreach_lerp_`` over all the
tensors, the EMA step of ``AveragedModel``); the holder of the average is ours because no library class fits.
``AveragedModel``, and Lightning's ``EMAWeightAveraging`` built on it, deep-copy the whole module and average every
parameter, frozen base weights included. diffusers' ``EMAModel`` keeps its shadow weights in a plain list: not in
the module's ``state_dict``, so Lightning would neither checkpoint nor resume them with the run, nor move them with
the module or hand them to a strategy; its decay always warms up (``(1 + n) / (10 + n)``, the first step a copy),
where the consistency target takes ``mu`` from the first update (``tests/callbacks/test_ema_callback.py`` checks the
EMA callback's warm-up against it); and its ``store`` / ``restore`` swap goes through CPU copies.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.optim.swa_utils import get_ema_multi_avg_fn

from vdistill.errors import UserError


def _key(name: str) -> str:
    return name.replace(".", "/")  # buffer names may not contain dots


class EMAWeights(nn.Module):
    """EMA of ``model``'s trainable parameters (buffers, so they are checkpointed and follow ``.to()``).

    Args:
        model: the online model (its parameters with ``requires_grad`` at construction are averaged).
        decay: ``mu``, the weight of the old average at each update (T2V-Turbo's paper: 0.95).
    """

    def __init__(self, model: nn.Module, decay: float = 0.95) -> None:
        super().__init__()
        if not 0.0 <= decay < 1.0:
            raise UserError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = float(decay)
        self.names = [n for n, p in model.named_parameters() if p.requires_grad]
        if not self.names:
            raise UserError(f"{type(model).__name__} has no trainable parameters to average")
        params = dict(model.named_parameters())
        for name in self.names:
            self.register_buffer(_key(name), params[name].detach().clone())

    def averaged(self) -> dict[str, Tensor]:
        """``{parameter name: averaged value}``."""
        return {name: getattr(self, _key(name)) for name in self.names}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One EMA step towards ``model``'s current parameters (call after each optimizer step)."""
        params = dict(model.named_parameters())
        averaged = self.averaged()
        online = [params[name].detach().to(avg.dtype) for name, avg in averaged.items()]
        get_ema_multi_avg_fn(self.decay)(list(averaged.values()), online, None)

    def forward(self, model: nn.Module, *args, **kwargs):
        """``model(*args, **kwargs)`` with the averaged values in place of its trainable parameters."""
        return functional_call(model, self.averaged(), args, kwargs, strict=False)

    def extra_repr(self) -> str:
        return f"decay={self.decay:g}, tensors={len(self.names)}"
