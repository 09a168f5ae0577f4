"""Loading weights safely: safetensors or ``torch.load(weights_only=True)``, strict key matching with an error
that names the missing and unexpected keys."""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from vdistill.errors import UserError


def _preview(keys: list[str], limit: int = 20) -> str:
    shown = ", ".join(keys[:limit])
    return f"[{shown}{', ...' if len(keys) > limit else ''}] ({len(keys)} in all)"


def load_checkpoint_file(path: str | Path, mmap: bool = False) -> dict:
    """A torch checkpoint read with ``torch.load(weights_only=True)``: tensors and plain values only, a pickled
    object (code) is refused. Unreadable or refused files are a one-line :class:`UserError` naming the path.
    ``mmap``: map the tensors instead of reading them (cheap when only the plain values are wanted)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {str(path)!r} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:  # weights_only refused a global: the file wants to build objects
        first = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
        raise UserError(f"checkpoint {str(path)!r} holds objects other than tensors and plain values, refused "
                        f"(torch.load weights_only: {first})") from err
    except (RuntimeError, OSError, EOFError, ValueError) as err:
        raise UserError(f"checkpoint {str(path)!r} is unreadable or truncated ({_one_line(err)})") from err
    if not isinstance(obj, dict):
        raise UserError(f"checkpoint {str(path)!r} holds a {type(obj).__name__}, not a mapping")
    return obj


def _one_line(err: BaseException) -> str:
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    return lines[0] if lines else type(err).__name__


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` file, or of a torch pickle loaded with ``weights_only=True``."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {str(path)!r} does not exist")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except Exception as err:  # safetensors raises its own error type for bad headers and short files
            raise UserError(f"{str(path)!r} is not a readable safetensors file (truncated or corrupt: "
                            f"{_one_line(err)})") from err
    state = load_checkpoint_file(path)
    if not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{str(path)!r} is not a state dict (it holds values other than tensors)")
    return state


def load_strict(module: nn.Module, state: dict[str, torch.Tensor], source: str = "checkpoint",
                expected: set[str] | None = None) -> None:
    """``module.load_state_dict(state)`` that fails with the missing and unexpected keys, or the tensors of another
    shape, listed by name.

    ``expected``: the keys ``state`` must hold exactly (default: all of the module's).
    """
    own = set(module.state_dict()) if expected is None else expected
    missing = sorted(own - set(state))
    unexpected = sorted(set(state) - own)
    if missing or unexpected:
        raise UserError(f"{source} does not match {type(module).__name__}: missing keys: {_preview(missing)}; "
                        f"unexpected keys: {_preview(unexpected)}")
    mine = module.state_dict()
    wrong = [f"{k} {tuple(getattr(v, 'shape', ())) or type(v).__name__} (model: {tuple(mine[k].shape)})"
             for k, v in state.items() if not isinstance(v, torch.Tensor) or v.shape != mine[k].shape]
    if wrong:
        raise UserError(f"{source} does not match {type(module).__name__}: tensors of another shape: "
                        f"{_preview(wrong, 5)}")
    module.load_state_dict(state, strict=expected is None)
