"""Critics by name: ``load_critic("hpsv2", checkpoint=...)``; new critics join with ``@register_critic(name)``."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vdistill.critics.base import Critic
from vdistill.errors import UserError

CriticBuilder = Callable[..., Critic]
CRITICS: dict[str, CriticBuilder] = {}


def register_critic(name: str) -> Callable[[CriticBuilder], CriticBuilder]:
    """Decorator: ``builder(checkpoint=None, **kwargs) -> Critic`` becomes ``load_critic(name, ...)``."""

    def add(builder: CriticBuilder) -> CriticBuilder:
        if name in CRITICS and CRITICS[name] is not builder:
            raise ValueError(f"critic {name!r} is already registered ({CRITICS[name]!r})")
        CRITICS[name] = builder
        return builder

    return add


def available_critics() -> list[str]:
    return sorted(CRITICS)


def load_critic(name: str, checkpoint: str | Path | None = None, **kwargs: Any) -> Critic:
    """Build critic ``name`` from its official checkpoint (``None``: random weights, for tests), frozen, in eval.

    Keyword arguments go to the critic's builder (``size="tiny"``, ``num_frames``, ``processor``, ``tokenizer``,
    ...); see each critic module.
    """
    if name not in CRITICS:
        raise UserError(f"unknown critic {name!r}; valid names: {', '.join(available_critics())}")
    builder = CRITICS[name]
    params = inspect.signature(builder).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        unknown = sorted(set(kwargs) - set(params))
        if unknown:
            valid = ", ".join(k for k in params if k != "checkpoint")
            raise UserError(f"critic {name!r} got unknown options {unknown}; valid options: {valid}")
    return builder(checkpoint=checkpoint, **kwargs).freeze()


def resolve_size(critic: str, size: Any, sizes: dict[str, Any]) -> Any:
    """A named size (``"full"``, ``"tiny"``) from ``sizes``, or ``size`` itself when it is already a config."""
    if not isinstance(size, str):
        return size
    if size not in sizes:
        raise UserError(f"unknown {critic} size {size!r}; valid choices: {', '.join(sizes)}")
    return sizes[size]
