"""The toy helpers of ``tests/objectives`` (tiny teachers) for the video datamodule tests."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "objectives"))  # objective_helpers
