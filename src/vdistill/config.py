"""Objects that remember how they were built, so a model can be saved as ``class_path`` + ``init_args``.

The same form LightningCLI uses in YAML; :func:`to_config` / :func:`from_config` round-trip it so an exported
teacher or student folder rebuilds without the config that trained it.
"""

from __future__ import annotations

import functools
import importlib
import inspect
from collections.abc import Iterable
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


# -- records read from files ------------------------------------------------------------------------------------
#: dotted class paths the user named in their own config or command line (:func:`trust_class_paths`)
_TRUSTED: set[str] = set()


def trust_class_paths(paths: Iterable[str]) -> None:
    """Let records read from files name these classes too: the CLI passes every ``class_path`` of the user's own
    config and command line, so a checkpoint of a run with the user's own backbone class reloads."""
    _TRUSTED.update(p for p in paths if isinstance(p, str))


def resolve_class(path: object, source: str, kind: str | None = None) -> type:
    """The class a record read from ``source`` (a file) names, or a :class:`UserError` naming the file and class.

    Only vdistill's registered components (:mod:`vdistill.registry`; of ``kind`` when given) and the classes the user
    named (:func:`trust_class_paths`) resolve. The name is checked against that list BEFORE anything is imported, so
    a downloaded file can never import a module or call a function by dotted path (``os.system`` is refused here,
    not after ``import os``).
    """
    from vdistill import registry

    if not isinstance(path, str):
        raise UserError(f"{source}: class_path {path!r} is not a string")
    name = registry.lookup(path)
    if name is None and path not in _TRUSTED:
        raise UserError(f"{source} names class {path!r}, which is neither a vdistill component nor a class of your "
                        "own config; refused (nothing was imported)")
    if name is not None:
        if kind is not None and registry.COMPONENTS[name][0] != kind:
            raise UserError(f"{source} names {path!r} where one of the {kind} is expected")
        return registry.load(name)
    cls = import_class(path)
    base = registry.base_class(kind) if kind is not None else object
    if not (inspect.isclass(cls) and issubclass(cls, base)):
        raise UserError(f"{source} names {path!r}, which is not a subclass of {base.__name__}")
    return cls


def _is_record(cfg: object) -> bool:
    return isinstance(cfg, dict) and "class_path" in cfg


def check_records(cfg: Any, source: str, kind: str | None = None, keys: tuple[str, ...] = ("class_path",)) -> None:
    """Refuse ``cfg`` (read from ``source``) if any ``class_path`` in it, at any depth, fails :func:`resolve_class`
    (the top-level one against ``kind``); nothing is built."""
    if isinstance(cfg, dict):
        for key in keys:
            if key in cfg:
                resolve_class(cfg[key], source, kind)
        for v in cfg.values():
            check_records(v, source, keys=keys)
    elif isinstance(cfg, (list, tuple)):
        for v in cfg:
            check_records(v, source, keys=keys)


def from_config(cfg: Any, source: str = "config", kind: str | None = None) -> Any:
    """Rebuild what :func:`to_config` wrote; ``source`` names the file it came from in errors.

    Every ``class_path`` is checked by :func:`resolve_class` (the outermost against ``kind``, e.g.
    ``"backbones"``) before anything is built, so a record from a file builds registered or
    user-named classes only.
    """
    check_records(cfg, source, kind)
    return _build(cfg, source)


def _build(cfg: Any, source: str) -> Any:
    if _is_record(cfg):
        cls = resolve_class(cfg["class_path"], source)
        init_args = cfg.get("init_args", {})
        extra = set(cfg) - {"class_path", "init_args"}
        if not isinstance(init_args, dict) or not all(isinstance(k, str) for k in init_args) or extra:
            raise UserError(f"{source}: the record of {cfg['class_path']!r} must be {{class_path, init_args: "
                            f"{{name: value}}}}, got keys {sorted(map(str, cfg))}")
        kwargs = {k: _build(v, source) for k, v in init_args.items()}
        try:
            inspect.signature(cls).bind(**kwargs)
        except TypeError as err:
            raise UserError(f"{source}: cannot build {cls.__name__}: {err}") from err
        return cls(**kwargs)
    if isinstance(cfg, list):
        return [_build(v, source) for v in cfg]
    if isinstance(cfg, dict):
        return {k: _build(v, source) for k, v in cfg.items()}
    return cfg
