"""What a checkpoint needs beyond Lightning's own for a resumed run to continue exactly: each rank's RNG states and
its modules' extra state (the GAN's fake queues).

Lightning restores the weights, the optimizer, the LR schedulers, the loops' counters and (with
:mod:`vdistill.data.resumable`) the data order; it does not restore the RNG, from which the objectives draw their
noise, timesteps and guidance scales. The module-level extra state (``get_extra_state``) is saved from rank 0 only,
but under DDP each rank keeps its own fake queue. Both are rank-local, so every rank's copy is gathered into the
checkpoint, as plain values and CPU tensors (``torch.load(weights_only=True)`` reads it), and each rank takes
its own back.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_warn
from lightning_utilities import apply_to_collection
from torch import Tensor, nn


def rng_state() -> dict[str, Any]:
    """The global RNG states of torch (CPU and every CUDA device), NumPy and Python."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)]}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    random.setstate(tuple(v if not isinstance(v, list) else tuple(v) for v in state["python"]))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _has_extra_state(module: nn.Module) -> bool:
    return type(module).get_extra_state is not nn.Module.get_extra_state


def rank_state(module: nn.Module) -> dict[str, Any]:
    """This rank's RNG states and the extra state of ``module``'s submodules that have one, by module name."""
    extra = {name: m.get_extra_state() for name, m in module.named_modules() if _has_extra_state(m)}
    return apply_to_collection({"rng": rng_state(), "extra": extra}, Tensor, lambda t: t.detach().cpu())


def gather_rank_states(state: dict[str, Any]) -> list[dict[str, Any]]:
    """Every rank's ``state``, in rank order (a collective: every rank must call it; one process: ``[state]``)."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [state]
    states: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(states, state)
    return states


def pick_rank_state(states: list[dict[str, Any]] | None, rank: int, world_size: int) -> dict[str, Any] | None:
    """This rank's entry of a checkpoint's rank states; rank 0's, with a warning, if the number of processes
    changed (the run then continues, but not as the interrupted one would have)."""
    if not states:
        return None
    if len(states) != world_size:
        rank_zero_warn(f"resuming on {world_size} processes from a checkpoint written by {len(states)}: every rank "
                       "takes rank 0's RNG state and fake queues, so the run will not repeat the interrupted one")
        return states[0]
    return states[rank]


def apply_rank_state(module: nn.Module, state: dict[str, Any]) -> None:
    """Restore what :func:`rank_state` returned: the RNG states and the submodules' extra state."""
    modules = dict(module.named_modules())
    for name, extra in state["extra"].items():
        if name in modules:
            modules[name].set_extra_state(extra)
    set_rng_state(state["rng"])
