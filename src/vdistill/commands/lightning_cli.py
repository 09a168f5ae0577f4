"""``vdistill fit / validate / test / predict``: LightningCLI with vdistill's checks of what the user passes.

Before anything is built: the user's own class paths are trusted (:func:`vdistill.config.trust_class_paths`),
trainer counts are checked, and a ``--ckpt_path``'s hyper-parameters (which LightningCLI merges into the config)
may name only registered or user-named classes; checkpoints load with ``weights_only=True``.
"""

from __future__ import annotations

import os
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

#: Lightning warnings that every run of a vdistill recipe would print, by design; ignored while the CLI runs (the
#: filters of the process that imports vdistill stay as they are).
EXPECTED_WARNINGS = (
    # the frozen teacher, its VAE / text encoder and the critics stay in eval mode (no dropout, no batch statistics)
    r"Found \d+ module\(s\) in eval mode at the start of training",
    # Distillation scores held-out trajectories only, so it has no validation step beside a video datamodule with
    # validation clips (ToyVideos in the toy consistency recipes): skipping them is the intent
    r"You passed in a `val_dataloader` but have no `validation_step`",
)


class VDistillCLI(LightningCLI):
    """LightningCLI in subclass mode: model and data are named by ``class_path`` (short class names work).

    With the default ``run=True`` the subcommand runs inside the constructor, under the filters of
    :data:`EXPECTED_WARNINGS`.
    """

    def __init__(self, args: list[str] | None = None, **kwargs) -> None:
        registry.import_all()  # LightningCLI resolves short names among imported subclasses
        with warnings.catch_warnings():
            for message in EXPECTED_WARNINGS:
                warnings.filterwarnings("ignore", message=message)
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
        resolve_class(hparams["_class_path"], where, kind="modules")
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


