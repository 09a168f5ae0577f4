"""Command-line errors as one line: our commands' parsers (:class:`CommandParser`), and argparse / jsonargparse
errors explained (:func:`explain_parse_error`: the bad component name with the valid choices, or the bad value and
the key it was given for; jsonargparse nests its reports several levels deep)."""

from __future__ import annotations

import argparse
import difflib
import re
from typing import NoReturn

from vdistill import registry
from vdistill.errors import UserError


class CommandParser(argparse.ArgumentParser):
    """The parser of our subcommands: a bad, missing or unknown argument is a :class:`UserError` (``vdistill`` prints
    it as one line and exits 2) instead of argparse's usage block and message. ``--help`` is unchanged."""

    def error(self, message: str) -> NoReturn:
        raise UserError(f"{self.prog}: {message} (options: {self.prog} --help)")


def explain_parse_error(err: argparse.ArgumentError) -> str:
    """One line from jsonargparse's nested report: the bad component name with the valid choices, or the
    innermost message."""
    text = str(err)
    bad = re.search(r"Expected a dot import path string: (\S+)", text)
    key = re.search(r'Parser key "([^"]+)"', text)
    where = f" for {key.group(1)!r}" if key else ""
    if bad:
        name = bad.group(1)
        kinds = registry.components()
        names = {n: kind for kind, rows in kinds.items() for n, _ in rows}
        close = difflib.get_close_matches(name, list(names), n=1, cutoff=0.5)
        kind = names[close[0]] if close else None
        choices = [n for n, _ in kinds[kind]] if kind else sorted(names)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        return f"unknown component {name!r}{where}; valid choices: {', '.join(choices)}{hint}"
    wrong_value = _innermost_value_error(text)
    if wrong_value:
        return wrong_value
    lines = [ln.strip(" -") for ln in text.splitlines() if ln.strip(" -")]
    return lines[-1] if len(lines) == 1 else " ".join(lines[:3])


def _innermost_value_error(text: str) -> str | None:
    """``model.init_args.lr: expected a float, got 'fast'`` from jsonargparse's nested Union report, or None."""
    keys = list(re.finditer(r'Parser key "([^"]+)":', text))
    if not keys:
        return None
    path = keys[0].group(1)
    for before, key in zip(keys, keys[1:]):
        between = text[before.end():key.start()]
        path += (".init_args." if "Problem with given class_path" in between else ".") + key.group(1)
    rest = [ln.strip(" -") for ln in text[keys[-1].end():].splitlines() if ln.strip(" -")]
    if not rest:
        return None
    m = re.match(r"Expected a <class '([\w.]+)'>\. Got value: (.*)", rest[0])
    reason = f"expected a {m.group(1)}, got {m.group(2)!r}" if m else rest[0]
    return f"bad value for {path!r}: {reason}"


def union_cause(err: argparse.ArgumentError) -> str:
    """The cause of a "does not validate against any of the Union subtypes" report (its most indented line, e.g.
    "Option 'lrr' is not accepted"), with the key it was found under; ``""`` for other reports."""
    text = str(err)
    if "Does not validate against any of the Union subtypes" not in text:
        return ""
    lines = [ln for ln in text.splitlines() if ln.strip(" -") and "NoneType" not in ln and "Given value" not in ln]
    deepest = max(lines, key=lambda ln: len(ln) - len(ln.lstrip(" -")))
    key = re.search(r'Parser key "([^"]+)"', text)
    return deepest.strip(" -") + (f" (under {key.group(1)!r})" if key else "")
