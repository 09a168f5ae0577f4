"""Reading official critic checkpoints and loading them strictly.

Official files wrap their state dict (HPSv2 ``state_dict``, ViCLIP ``model``, InternVideo2's DeepSpeed
``module``) and may carry tensors scoring never uses (distillation heads, MLM heads). Those are dropped BY NAME,
from a list each critic documents; every other difference between file and model is an error that names the keys.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from vdistill.errors import UserError

MAX_LISTED_KEYS = 20


def require_path(path: str | Path, what: str) -> Path:
    """``path`` as a :class:`Path`; a :class:`UserError` naming it when it does not exist."""
    p = Path(path).expanduser()
    if not p.exists():
        raise UserError(f"{what} not found: {str(p)!r} does not exist")
    return p


def read_checkpoint(path: str | Path, wrapper_key: str | None, what: str,
                    trust_checkpoint: bool = False) -> dict[str, Tensor]:
    """Load a ``torch.save`` file and return the state dict under ``wrapper_key`` (or the file itself).

    ``weights_only=True`` unless ``trust_checkpoint``: a file that pickles arbitrary objects next to its weights
    (training configs, DeepSpeed bookkeeping) is refused with a message saying how to allow it.
    """
    p = require_path(path, f"{what} checkpoint")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=not trust_checkpoint)
    except pickle.UnpicklingError as err:
        raise UserError(
            f"{what} checkpoint {str(p)!r} holds objects other than tensors, which torch.load(weights_only=True) "
            f"refuses ({str(err).splitlines()[0]}); pass trust_checkpoint=True if you trust this file") from err
    if wrapper_key is not None and isinstance(obj, Mapping) and wrapper_key in obj:
        obj = obj[wrapper_key]
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        keys = list(obj)[:10] if isinstance(obj, Mapping) else type(obj).__name__
        raise UserError(f"{what} checkpoint {str(p)!r}: expected a state dict under {wrapper_key!r}, found {keys}")
    return dict(obj)


def strip_prefix(state_dict: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """Remove ``prefix`` from every key that has it (e.g. DataParallel's ``module.``)."""
    n = len(prefix)
    return {(k[n:] if k.startswith(prefix) else k): v for k, v in state_dict.items()}


def format_keys(keys: Iterable[str]) -> str:
    keys = sorted(keys)
    shown = keys[:MAX_LISTED_KEYS]
    more = f", ... ({len(keys) - len(shown)} more)" if len(keys) > len(shown) else ""
    return f"({len(keys)}) [{', '.join(shown)}{more}]"


def load_strict(module: nn.Module, state_dict: Mapping[str, Tensor], what: str,
                ignore: Callable[[str], bool] | Iterable[str] = ()) -> list[str]:
    """Load ``state_dict`` into ``module`` after dropping the ignorable keys; any other mismatch raises.

    Args:
        module: the model; its ``state_dict()`` keys are the expected ones.
        state_dict: the checkpoint's tensors, official key names.
        what: names the checkpoint in error messages.
        ignore: key prefixes (or a predicate) for tensors the file carries but scoring does not use.

    Returns:
        The keys that were dropped as ignorable.

    Raises:
        UserError: listing missing keys, unexpected keys and shape mismatches, with counts.
    """
    is_ignored = ignore if callable(ignore) else (lambda k, p=tuple(ignore): k.startswith(p))
    dropped = [k for k in state_dict if is_ignored(k)]
    state_dict = {k: v for k, v in state_dict.items() if not is_ignored(k)}
    expected = module.state_dict()
    missing = set(expected) - set(state_dict)
    unexpected = set(state_dict) - set(expected)
    shapes = [f"{k}: file {tuple(state_dict[k].shape)} vs model {tuple(expected[k].shape)}"
              for k in sorted(set(expected) & set(state_dict)) if state_dict[k].shape != expected[k].shape]
    if missing or unexpected or shapes:
        msg = f"{what} checkpoint does not match the model: missing keys {format_keys(missing)}; " \
              f"unexpected keys {format_keys(unexpected)}"
        if shapes:
            msg += f"; shape mismatches {format_keys(shapes)}"
        raise UserError(msg)
    module.load_state_dict(state_dict, strict=True)
    return dropped
