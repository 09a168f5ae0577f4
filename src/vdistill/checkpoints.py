"""Loading weights safely: safetensors or ``torch.load(weights_only=True)``, strict key matching with an error
that names the missing and unexpected keys."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from vdistill.errors import UserError


def _preview(keys: list[str], limit: int = 20) -> str:
    shown = ", ".join(keys[:limit])
    return f"[{shown}{', ...' if len(keys) > limit else ''}] ({len(keys)} in all)"


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` file, or of a torch pickle loaded with ``weights_only=True``."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {str(path)!r} does not exist")
    if path.suffix == ".safetensors":
        return load_file(str(path))
    return torch.load(path, map_location="cpu", weights_only=True)


def load_strict(module: nn.Module, state: dict[str, torch.Tensor], source: str = "checkpoint",
                expected: set[str] | None = None) -> None:
    """``module.load_state_dict(state)`` that fails with the missing and unexpected keys listed by name.

    ``expected``: the keys ``state`` must hold exactly (default: all of the module's).
    """
    own = set(module.state_dict()) if expected is None else expected
    missing = sorted(own - set(state))
    unexpected = sorted(set(state) - own)
    if missing or unexpected:
        raise UserError(f"{source} does not match {type(module).__name__}: missing keys: {_preview(missing)}; "
                        f"unexpected keys: {_preview(unexpected)}")
    module.load_state_dict(state, strict=expected is None)
