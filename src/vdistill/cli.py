"""The one entry point: ``vdistill {fit,validate,test,predict}`` (LightningCLI) and our own subcommands.

Only what a command uses is imported: ``vdistill --help`` and ``vdistill list`` never import Lightning, and the
training subcommands import it through :mod:`vdistill.commands.lightning_cli`.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from vdistill import registry
from vdistill.commands.parse_errors import CommandParser, explain_parse_error
from vdistill.errors import UserError


def cmd_list(argv: list[str]) -> None:
    p = CommandParser(prog="vdistill list", description="every registered component and critic, by kind",
                                exit_on_error=False)
    p.add_argument("--kind", choices=[*registry.KINDS, "critics"], help="only this kind")
    for kind, rows in registry.components(p.parse_args(argv).kind).items():
        print(f"{kind}:")
        width = max((len(n) for n, _ in rows), default=0)
        for name, summary in rows:
            print(f"  {name:<{width}}  {summary}")


# Our own subcommands: name -> module with ``run(argv)`` (imported only when used: start-up stays fast).
COMMANDS = {
    "sample": "vdistill.commands.sample",
    "synth": "vdistill.commands.synth",
    "preprocess": "vdistill.commands.preprocess",
    "demo": "vdistill.commands.demo",
    "bench": "vdistill.commands.bench",
    "export": "vdistill.commands.export",
    "critic-report": "vdistill.commands.critic_report",
    "sweep": "vdistill.commands.sweep",
    "profile": "vdistill.commands.profile",
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
            from vdistill.commands.lightning_cli import (
                VDistillCLI,  # Lightning, torch and jsonargparse: seconds to import
            )

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
