"""Objects that remember how they were built, so a model can be saved as ``class_path`` + ``init_args``.

The same form LightningCLI uses in YAML; :func:`to_config` / :func:`from_config` round-trip it so an exported
teacher or student folder rebuilds without the config that trained it.
"""

from __future__ import annotations

import functools
import importlib
import inspect
from typing import Any

from vdistill.errors import UserError


class RecordsInit:
    """Mixin: the outermost ``__init__`` call's bound arguments are kept in ``self._init_args``."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is None or getattr(init, "_records_init", False):
            return
        sig = inspect.signature(init)

        @functools.wraps(init)
        def wrapped(self, *args: Any, **kw: Any) -> None:
            if "_init_args" not in self.__dict__:
                bound = sig.bind(self, *args, **kw)
                bound.apply_defaults()
                recorded = {k: v for k, v in bound.arguments.items() if k != "self"}
                object.__setattr__(self, "_init_args", recorded)
            init(self, *args, **kw)

        wrapped._records_init = True  # type: ignore[attr-defined]
        cls.__init__ = wrapped  # type: ignore[method-assign]


def class_path(obj_or_cls: Any) -> str:
    cls = obj_or_cls if inspect.isclass(obj_or_cls) else type(obj_or_cls)
    return f"{cls.__module__}.{cls.__qualname__}"


def to_config(obj: Any) -> Any:
    """``{"class_path", "init_args"}`` for a :class:`RecordsInit` object, recursively; plain values as is."""
    if isinstance(obj, RecordsInit):
        return {"class_path": class_path(obj), "init_args": {k: to_config(v) for k, v in obj._init_args.items()}}
    if isinstance(obj, (list, tuple)):
        return [to_config(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_config(v) for k, v in obj.items()}
    return obj


def import_class(path: str) -> type:
    module, _, name = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as err:
        raise UserError(f"cannot import class {path!r}: {err}") from err


def from_config(cfg: Any) -> Any:
    """Rebuild what :func:`to_config` wrote."""
    if isinstance(cfg, dict) and set(cfg) == {"class_path", "init_args"}:
        cls = import_class(cfg["class_path"])
        return cls(**{k: from_config(v) for k, v in cfg["init_args"].items()})
    if isinstance(cfg, list):
        return [from_config(v) for v in cfg]
    if isinstance(cfg, dict):
        return {k: from_config(v) for k, v in cfg.items()}
    return cfg
