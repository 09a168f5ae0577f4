"""Critics as a training run holds them: built by the names objectives use from config specs, frozen, in eval mode,
ready for FSDP (:func:`build_critics`)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from torch import nn

from vdistill.critics.base import Critic
from vdistill.critics.registry import load_critic
from vdistill.critics.toy import SHIPPED_CRITICS
from vdistill.errors import UserError


def build_critics(specs: Mapping[str, Any] | Iterable[str] | None) -> nn.ModuleDict:
    """Frozen, eval-mode critics by the names objectives use, from config specs.

    Args:
        specs: ``{name: spec}`` or a list of names (each ``{name: {}}``). A spec is a built :class:`Critic`, a
            checkpoint string, nothing (``{}`` / ``None``), or the options of
            :func:`~vdistill.critics.load_critic` plus ``critic`` (the registered name, default: the key, so one
            critic can be held twice under two names) and
            ``grad_checkpointing`` (recompute the critic's activations in backward: less memory). Without a
            ``checkpoint``, critics with shipped weights (the toy critics) load them; ``checkpoint: null`` gives
            random weights (tests only).
    """
    if specs is None:
        return nn.ModuleDict()
    if not isinstance(specs, Mapping):
        specs = {str(name): {} for name in specs}
    built = {}
    for name, spec in specs.items():
        if isinstance(spec, Critic):
            built[name] = spec.freeze()
            continue
        opts = {} if spec is None else {"checkpoint": spec} if isinstance(spec, str) else dict(spec)
        registered = opts.pop("critic", name)
        checkpointing = bool(opts.pop("grad_checkpointing", False))
        if "checkpoint" not in opts:
            if registered not in SHIPPED_CRITICS:
                raise UserError(f"critic {name!r} ({registered}) needs a checkpoint: model.critics: "
                                f"{{{name}: {{checkpoint: path/to/official/file}}}}")
            opts["checkpoint"] = "shipped"
        if opts["checkpoint"] is None:
            from lightning.pytorch.utilities import rank_zero_warn  # only here: building critics needs no Lightning

            rank_zero_warn(f"critic {name!r} has no checkpoint: random weights (only useful in tests)")
        critic = load_critic(registered, **opts)
        if checkpointing:
            critic.set_grad_checkpointing(True)
        built[name] = critic
    for critic in built.values():
        scalars_as_buffers(critic)
    return nn.ModuleDict(built)


def scalars_as_buffers(module: nn.Module) -> None:
    """Turn a frozen module's 0-dim parameters (open_clip's and CLIP's ``logit_scale``) into buffers of the same
    name and value: FSDP refuses to wrap a module with scalar parameters, and a frozen critic's need not be ones."""
    for sub in module.modules():
        for name, p in list(sub._parameters.items()):
            if p is not None and p.ndim == 0:
                del sub._parameters[name]
                sub.register_buffer(name, p.detach())
