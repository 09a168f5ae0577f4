"""User-facing errors: the CLI prints their message alone (no traceback) and exits with status 2."""

from __future__ import annotations

from collections.abc import Iterable


class UserError(ValueError):
    """A bad value from the user (config, path, name, shape). The message names the value and the choices."""


def unknown_choice(what: str, value: object, choices: Iterable[object]) -> UserError:
    return UserError(f"unknown {what} {value!r}; valid choices: {', '.join(map(str, sorted(map(str, choices))))}")
