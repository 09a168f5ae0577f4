"""AdamW that can hold whole parameter groups still for a step (DMD2's two time-scale update rule).

On a fake-score-only step of DMD2 the student must come out bit-identical: weights, AdamW's moments, its step count
and its weight decay. torch's AdamW leaves a parameter alone when its ``grad`` is None, so on one device it is enough
to drop the student's gradients before the step. Under DeepSpeed ZeRO that is not: the engine copies every
gradient into one flat fp32 partition per parameter group (zeros where a parameter had none) and steps that, so
the student would move by its momentum and weight decay. What ZeRO does keep is each group's dict, extra keys
included, and it calls the wrapped optimizer's ``step`` once per group (stage 2) or sub-group (stage 3).

:class:`HoldingAdamW` therefore reads a flag from the group: a group with ``hold: True`` is skipped entirely by
that step (its gradients are set aside during the update and put back after), whatever form its parameters take
(the module's own tensors, FSDP's flat parameters, ZeRO's fp32 partitions). The distillation module sets the flag
in ``on_before_optimizer_step``, which Lightning calls after the backward and before any strategy's step.
"""

from __future__ import annotations

import torch


class HoldingAdamW(torch.optim.AdamW):
    """``torch.optim.AdamW`` whose ``step`` leaves every group marked ``hold: True`` untouched (weights, moments,
    step count, weight decay); unmarked groups update exactly as torch's AdamW updates them."""

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:  # Lightning's closure runs the backward and on_before_optimizer_step: flags after it
            with torch.enable_grad():
                loss = closure()
        held = [p for group in self.param_groups if group.get("hold") for p in group["params"] if p.grad is not None]
        grads = [p.grad for p in held]
        for p in held:
            p.grad = None
        try:
            super().step()
        finally:
            for p, grad in zip(held, grads):
                p.grad = grad
        return loss
