"""The one entry point: ``vdistill {fit,validate,test,predict}`` (LightningCLI) and our own subcommands.

Only what a command uses is imported: ``vdistill --help`` and ``vdistill list`` never import Lightning, and the
training subcommands import it through :mod:`vdistill.lightning_cli`.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import re
import sys

from vdistill import registry
from vdistill.errors import UserError


def cmd_list(argv: list[str]) -> None:
    p = argparse.ArgumentParser(prog="vdistill list", description="every registered component and critic, by kind",
                                exit_on_error=False)
    p.add_argument("--kind", choices=[*registry.KINDS, "critics"], help="only this kind")
    for kind, rows in registry.components(p.parse_args(argv).kind).items():
        print(f"{kind}:")
        width = max((len(n) for n, _ in rows), default=0)
        for name, summary in rows:
            print(f"  {name:<{width}}  {summary}")


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


# Our own subcommands: name -> module with ``run(argv)`` (imported only when used: start-up stays fast).
COMMANDS = {
    "sample": "vdistill.sampling.command",
    "synth": "vdistill.synth.command",
    "preprocess": "vdistill.preprocess.command",
    "demo": "vdistill.demo",
    "bench": "vdistill.bench",
    "export": "vdistill.export",
    "critic-report": "vdistill.critics.report",
    "sweep": "vdistill.sweep",
    "profile": "vdistill.profile.command",
}


USAGE = """usage: vdistill <command> [options]   (vdistill <command> --help for its options)

training (LightningCLI; --config YAML, --print_config):
  fit        train (teachers, students)          validate / test / predict   evaluate a module
our commands:
  list       every registered component and critic, by kind (--kind backbones, ..., critics)
  sample     sample a model on a prompt list: videos.npz, mp4, GIF grid, ToyBench in the toy world
  synth      write a teacher's synthetic trajectory dataset (key points only; resumable, split by rank)
  preprocess encode real clips once with the teacher's VAE and text encoder (latents + text; resumable, split by rank)
  bench      sample several models on the same prompts: one ToyBench table with measured speed-ups
  export     merge a (LoRA) student checkpoint into a folder that `vdistill sample` loads
  demo       the whole pipeline in the toy world: synth, distil (trajectory + adversarial + reward), bench
  critic-report  how well a critic ranks toy captions and tracks the oracle (toy critics)
  sweep      an ablation: a grid of config fragments, one fit each, one results table (resumable)
  profile    a recipe's FLOPs and memory per rank at its real size, traced on the CPU without weights
"""


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    try:
        if not args or args[0] in ("-h", "--help"):
            print(USAGE)
        elif args[0] == "list":
            cmd_list(args[1:])
        elif args and args[0] in COMMANDS:
            importlib.import_module(COMMANDS[args[0]]).run(args[1:])
        else:
            from vdistill.lightning_cli import VDistillCLI  # Lightning, torch and jsonargparse: seconds to import

            VDistillCLI(args=argv)
    except argparse.ArgumentError as err:
        print(f"vdistill: error: {explain_parse_error(err)}", file=sys.stderr)
        raise SystemExit(2) from None
    except UserError as err:
        print(f"vdistill: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    except OSError as err:  # a full disk, a read-only or missing folder: the path and the reason, no traceback
        where = f": {str(err.filename)!r}" if err.filename is not None else ""
        print(f"vdistill: error: {err.strerror or err}{where}", file=sys.stderr)
        raise SystemExit(2) from None
    except ValueError as err:  # jsonargparse re-raises a constructor's UserError as the cause of a ValueError
        cause = err.__cause__
        while cause is not None and not isinstance(cause, UserError):
            cause = cause.__cause__
        if cause is None:
            raise
        print(f"vdistill: error: {cause}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
