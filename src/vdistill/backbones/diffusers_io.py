"""Loading a teacher from a local folder in the diffusers layout (``unet/`` or ``transformer/``, ``vae/``,
``text_encoder/``, ``tokenizer/``, ``scheduler/``), as ``save_pretrained`` or a hub snapshot writes it.

Nothing here downloads: every part is read with ``local_files_only=True``, and a missing folder or file is a
:class:`~vdistill.errors.UserError` that names the path and what is missing.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
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
    """``cls.from_pretrained(root, subfolder=...)`` offline; missing or unreadable files become a UserError."""
    try:
        return cls.from_pretrained(str(root), subfolder=subfolder, local_files_only=True, **kwargs)
    except (OSError, ValueError) as err:  # both libraries raise these for missing config / weight files
        raise UserError(f"cannot load {cls.__name__} from {str(root / subfolder)!r}: {err}") from err


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
