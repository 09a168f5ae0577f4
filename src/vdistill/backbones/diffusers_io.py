"""Loading a teacher from a local folder in the diffusers layout (``unet/`` or ``transformer/``, ``vae/``,
``text_encoder/``, ``tokenizer/``, ``scheduler/``), as ``save_pretrained`` or a hub snapshot writes it.

Nothing here downloads: every part is read with ``local_files_only=True``, and a missing folder or file is a
:class:`~vdistill.errors.UserError` that names the path and what is missing.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from vdistill.errors import UserError

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


def resolve_dtype(name: str | torch.dtype) -> torch.dtype:
    """``"bfloat16"`` -> ``torch.bfloat16`` (also accepts a dtype, or ``"torch.bfloat16"``)."""
    if isinstance(name, torch.dtype):
        return name
    key = str(name).removeprefix("torch.")
    if key not in DTYPES:
        raise UserError(f"unknown dtype {name!r}; valid choices: {', '.join(sorted(DTYPES))}")
    return DTYPES[key]


def check_model_folder(path: str | Path, parts: Iterable[str], family: str) -> Path:
    """The folder as a ``Path`` once it and every sub-folder in ``parts`` exist, else a UserError."""
    root = Path(path).expanduser()
    if not root.is_dir():
        raise UserError(f"{family} model folder {str(root)!r} does not exist (expected a local folder in the "
                        f"diffusers layout with sub-folders {', '.join(parts)})")
    missing = [p for p in parts if not (root / p).is_dir()]
    if missing:
        raise UserError(f"{family} model folder {str(root)!r} lacks the sub-folder(s) {', '.join(missing)} "
                        f"(the diffusers layout has {', '.join(parts)})")
    return root


def load_part(cls: Any, root: Path, subfolder: str, **kwargs: Any) -> Any:
    """``cls.from_pretrained(root, subfolder=...)`` offline, checked; every problem is a one-line UserError naming
    the sub-folder or file:

    * a missing or unparsable config, a missing weights file (the libraries' ``OSError`` / ``ValueError``);
    * a truncated or corrupt ``.safetensors`` file (its header is read first: diffusers would report only that it
      is "unable to load weights", transformers raises safetensors' own error);
    * weights that do not fit the config: missing, unexpected or reshaped tensors. diffusers leaves missing
      tensors on the meta device and drops unexpected ones with a logged warning, transformers initialises missing
      ones at random and raises about reshaped ones with a pointer to a logged table; here their loading info
      (``output_loading_info``) is checked and their logged reports are silenced, as this error says it all;
    * a tokenizer folder without the files the tokenizer is built from (transformers 5 builds an empty
      ``CLIPTokenizer`` from an empty folder).
    """
    folder = root / subfolder
    is_model = isinstance(cls, type) and issubclass(cls, torch.nn.Module)
    if is_model:
        check_model_files(folder)
        kwargs["output_loading_info"] = True
        if cls.__module__.startswith("transformers"):  # reshaped tensors come back in the loading info
            kwargs["ignore_mismatched_sizes"] = True
    else:
        check_tokenizer_files(cls, folder)
    try:
        with quiet_loading_reports():
            loaded = cls.from_pretrained(str(root), subfolder=subfolder, local_files_only=True, **kwargs)
    except (OSError, ValueError, RuntimeError) as err:  # what both libraries raise for missing / unreadable files
        shape = DIFFUSERS_SHAPE_ERROR.search(str(err))
        if shape:  # diffusers names one reshaped tensor, and suggests loading it at random
            wrong = reshaped(shape["key"], re.findall(r"\d+", shape["file"]), re.findall(r"\d+", shape["config"]))
            raise UserError(f"the weights in {str(folder)!r} do not match its config.json ({cls.__name__}): "
                            f"a tensor of another shape ({wrong})") from err
        raise UserError(f"cannot load {cls.__name__} from {str(folder)!r}: {one_line(err)}") from err
    if not is_model:
        return loaded
    model, info = loaded
    check_loading_info(info, cls.__name__, folder)
    return model


def one_line(err: BaseException) -> str:
    """The message of ``err`` on one line (the libraries' messages span several)."""
    return " ".join(str(err).split()) or type(err).__name__


#: diffusers' ModelMixin.from_pretrained on a tensor of another shape
DIFFUSERS_SHAPE_ERROR = re.compile(
    r"because (?P<key>\S+) expected shape torch\.Size\((?P<config>\[.*?\])\), but got torch\.Size\((?P<file>\[.*?\])\)")


def check_model_files(folder: Path) -> None:
    """``folder`` holds ``config.json`` and weights, and every ``*.safetensors`` file in it has a complete header
    and is as long as the header says (reads the headers only)."""
    from safetensors import SafetensorError, safe_open

    if not folder.is_dir():
        return  # from_pretrained names the missing folder
    if not (folder / "config.json").is_file():
        raise UserError(f"model folder {str(folder)!r} has no config.json")
    if not any(folder.glob("*.safetensors")) and not any(folder.glob("*.bin")):
        raise UserError(f"model folder {str(folder)!r} holds no weights (no *.safetensors or *.bin file)")
    for file in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(str(file), framework="pt"):
                pass
        except (SafetensorError, OSError) as err:
            raise UserError(f"{str(file)!r} is truncated or corrupt ({one_line(err)}); download or save "
                            f"{folder.name}/ again") from None


TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "spiece.model", "vocab.json", "vocab.txt")


def check_tokenizer_files(cls: Any, folder: Path) -> None:
    """``folder`` holds one of the files a tokenizer of ``cls`` is built from (its ``vocab_files_names``, or the
    usual ones for ``AutoTokenizer``)."""
    if not folder.is_dir():
        return  # from_pretrained names the missing folder
    names = tuple(dict.fromkeys(getattr(cls, "vocab_files_names", {}).values())) or TOKENIZER_FILES
    if not any((folder / n).is_file() for n in names):
        raise UserError(f"tokenizer folder {str(folder)!r} has none of the files {cls.__name__} is built from "
                        f"({', '.join(names)})")


def check_loading_info(info: dict, name: str, folder: Path) -> None:
    """Refuse weights that do not fit the config: the missing, unexpected and reshaped tensors that
    ``from_pretrained(..., output_loading_info=True)`` reports (after the libraries' own ignore lists)."""
    problems = []
    for key, what in (("missing_keys", "missing from the weights"), ("unexpected_keys", "not in the config")):
        keys = sorted(info.get(key) or ())
        if keys:
            problems.append(f"{len(keys)} tensors {what} ({preview(keys)})")
    shapes = sorted(reshaped(k, a, b) for k, a, b in info.get("mismatched_keys") or ())
    if shapes:
        problems.append(f"{len(shapes)} tensors of another shape ({preview(shapes, 3)})")
    if problems:
        raise UserError(f"the weights in {str(folder)!r} do not match its config.json ({name}): "
                        f"{'; '.join(problems)}")


def reshaped(key: str, in_file: Iterable, in_config: Iterable) -> str:
    """``key: 16x16 in the file vs 16x32 by the config``."""
    return f"{key}: {'x'.join(map(str, in_file))} in the file vs {'x'.join(map(str, in_config))} by the config"


def preview(items: list[str], limit: int = 5) -> str:
    return ", ".join(items[:limit]) + (", ..." if len(items) > limit else "")


def _no_warnings(record: logging.LogRecord) -> bool:
    return record.levelno != logging.WARNING


@contextmanager
def quiet_loading_reports() -> Iterator[None]:
    """Drop the warnings the two libraries' loaders log (their loading reports: :func:`check_loading_info` turns
    what they report into the error). A filter, not a level: transformers 5 runs extra checks, with warnings of
    their own, when its loader's logger level is WARNING or above."""
    loggers = [logging.getLogger(n) for n in ("diffusers.models.modeling_utils", "transformers.modeling_utils")]
    for lg in loggers:
        lg.addFilter(_no_warnings)
    try:
        yield
    finally:
        for lg in loggers:
            lg.removeFilter(_no_warnings)


def read_scheduler_config(root: Path) -> dict[str, Any]:
    """The folder's ``scheduler/scheduler_config.json`` as a dict (empty when the file is absent)."""
    file = root / "scheduler" / "scheduler_config.json"
    if not file.is_file():
        return {}
    try:
        return json.loads(file.read_text())
    except json.JSONDecodeError as err:
        raise UserError(f"{str(file)!r} is not valid JSON: {err}") from err


def frozen_load_dtype(name: str | torch.dtype | None, default: torch.dtype) -> torch.dtype:
    """The dtype of a frozen part: ``name`` when given, else the denoiser's ``default``."""
    return default if name is None else resolve_dtype(name)
