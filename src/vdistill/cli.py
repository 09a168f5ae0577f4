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
from vdistill.checkpoints import load_checkpoint_file
from vdistill.config import check_records, resolve_class, trust_class_paths
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
        registry.import_all()  # LightningCLI resolves short names among imported subclasses
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

    def parse_arguments(self, parser, args) -> None:
        super().parse_arguments(parser, args)
        sub = self.config.get("subcommand")
        config = self.config[sub] if sub else self.config
        # the classes the user names in their own config and command line may be named by their checkpoints too
        trust_class_paths(class_paths(config.as_dict()))
        check_trainer_counts(config.get("trainer"))
        if "weights_only" in config and config["weights_only"] is None:
            # Lightning's default unpickles a remote (http) --ckpt_path with weights_only=False: code from the network
            config["weights_only"] = True
        ckpt_path = config.get("ckpt_path")
        if ckpt_path and os.path.isfile(ckpt_path):
            check_checkpoint_hparams(ckpt_path, config.as_dict())

    def instantiate_trainer(self, **kwargs) -> L.Trainer:
        # model and data are built, the Trainer (which starts logging) is not: a module whose objectives need what
        # the data lacks (key points, real videos) fails here, in one line, before anything runs
        check_data = getattr(self.model, "check_data", None)
        if check_data is not None:
            check_data(self.datamodule)
        return super().instantiate_trainer(**kwargs)


def class_paths(cfg: object) -> set[str]:
    """Every ``class_path`` value in a parsed config, at any depth."""
    if isinstance(cfg, dict):
        found = {cfg["class_path"]} if isinstance(cfg.get("class_path"), str) else set()
        return found.union(*(class_paths(v) for v in cfg.values()))
    if isinstance(cfg, (list, tuple)):
        return set().union(*(class_paths(v) for v in cfg))
    return set()


def check_trainer_counts(trainer: object) -> None:
    """Refuse step and epoch counts Lightning would take silently or reject with a traceback (-1 = no limit)."""
    if trainer is None:
        return
    for key, low in (("max_steps", -1), ("max_epochs", -1), ("min_steps", 0), ("min_epochs", 0),
                     ("accumulate_grad_batches", 1), ("log_every_n_steps", 1)):
        value = trainer.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < low):
            raise UserError(f"trainer.{key} is {value!r}; it must be an integer >= {low}"
                            + (" (-1: no limit)" if low == -1 else ""))


def check_checkpoint_hparams(ckpt_path: str, user_config: dict) -> None:
    """Refuse a ``--ckpt_path`` whose hyper-parameters (which LightningCLI merges into the config before it builds
    the model) name a class that is neither registered nor in the user's own config, or turn on
    ``trust_checkpoint`` (an unsafe ``torch.load``) where the user's own config does not."""
    ckpt = load_checkpoint_file(ckpt_path, mmap=True)
    hparams = ckpt.get("hyper_parameters") or {}
    where = f"checkpoint {ckpt_path!r} (hyper_parameters)"
    if not isinstance(hparams, dict):
        raise UserError(f"{where} is a {type(hparams).__name__}, not a mapping")
    check_records(hparams, where, keys=("class_path", "_class_path"))
    if "_class_path" in hparams:
        resolve_class(hparams["_class_path"], where, kind="modules (training recipes)")
    if trusts_checkpoints(hparams) and not trusts_checkpoints(user_config.get("model")):
        raise UserError(f"{where} turns on trust_checkpoint (an unsafe torch.load of a critic's weights); set it in "
                        "your own config if you mean it")


def trusts_checkpoints(cfg: object) -> bool:
    """Whether any ``trust_checkpoint`` in ``cfg`` is true."""
    if isinstance(cfg, dict):
        return bool(cfg.get("trust_checkpoint")) or any(trusts_checkpoints(v) for v in cfg.values())
    if isinstance(cfg, (list, tuple)):
        return any(trusts_checkpoints(v) for v in cfg)
    return False


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
