"""The one entry point: ``vdistill {fit,validate,test,predict}`` (LightningCLI) and our own subcommands."""

from __future__ import annotations

import argparse
import difflib
import importlib
import os
import re
import sys
import warnings

import lightning as L
import torch
from lightning.pytorch.cli import LightningCLI

from vdistill import registry
from vdistill.errors import UserError

if "DS_ACCELERATOR" not in os.environ and not torch.cuda.is_available():
    # DeepSpeed (imported by jsonargparse for its strategy, by transformers when loading) logs a warning on STDOUT
    # when it finds no GPU; naming its CPU backend keeps stdout clean for `--print_config > run.yaml`
    os.environ["DS_ACCELERATOR"] = "cpu"


# The frozen teacher, its VAE / text encoder and the critics stay in eval mode by design (no dropout, no batch
# statistics); Lightning's warning about modules in eval mode at the start of training would fire on every run.
warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode at the start of training")


class VDistillCLI(LightningCLI):
    """LightningCLI in subclass mode: model and data are named by ``class_path`` (short class names work)."""

    def __init__(self, args: list[str] | None = None, **kwargs) -> None:
        super().__init__(
            L.LightningModule,
            L.LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_kwargs={"overwrite": True},
            parser_kwargs={"exit_on_error": False},
            args=args,
            **kwargs,
        )

    def instantiate_trainer(self, **kwargs) -> L.Trainer:
        # model and data are built, the Trainer (which starts logging) is not: a module whose objectives need what
        # the data lacks (key points, real videos) fails here, in one line, before anything runs
        check_data = getattr(self.model, "check_data", None)
        if check_data is not None:
            check_data(self.datamodule)
        return super().instantiate_trainer(**kwargs)


def cmd_list(argv: list[str]) -> None:
    for kind, rows in registry.components().items():
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
    lines = [ln.strip(" -") for ln in text.splitlines() if ln.strip(" -")]
    return lines[-1] if len(lines) == 1 else " ".join(lines[:3])


# Our own subcommands: name -> module with ``run(argv)`` (imported only when used: start-up stays fast).
COMMANDS = {
    "sample": "vdistill.sampling.command",
    "synth": "vdistill.synth.command",
    "demo": "vdistill.demo",
    "bench": "vdistill.bench",
    "export": "vdistill.export",
    "critic-report": "vdistill.critics.report",
    "sweep": "vdistill.sweep",
}


USAGE = """usage: vdistill <command> [options]   (vdistill <command> --help for its options)

training (LightningCLI; --config YAML, --print_config):
  fit        train (teachers, students)          validate / test / predict   evaluate a module
our commands:
  list       every registered component, by kind
  sample     sample a model on a prompt list: videos.npz, mp4, GIF grid, ToyBench in the toy world
  synth      write a teacher's synthetic trajectory dataset (key points only; resumable, split by rank)
  bench      sample several models on the same prompts: one ToyBench table with measured speed-ups
  export     merge a (LoRA) student checkpoint into a folder that `vdistill sample` loads
  demo       the whole pipeline in the toy world: synth, distil (trajectory + adversarial + reward), bench
  critic-report  how well a critic ranks toy captions and tracks the oracle (toy critics)
  sweep      an ablation: a grid of config fragments, one fit each, one results table (resumable)
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
            VDistillCLI(args=argv)
    except argparse.ArgumentError as err:
        print(f"vdistill: error: {explain_parse_error(err)}", file=sys.stderr)
        raise SystemExit(2) from None
    except UserError as err:
        print(f"vdistill: error: {err}", file=sys.stderr)
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
