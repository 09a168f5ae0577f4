"""The tiny teachers of the other test folders, reused here without copying them: the diffusers folders of
``tests/backbones`` (ModelScope, Wan) and the toy helpers of ``tests/objectives``."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "objectives"))  # objective_helpers

_spec = importlib.util.spec_from_file_location(
    "vdistill_tests_backbone_fixtures", Path(__file__).resolve().parents[1] / "backbones" / "conftest.py")
_fixtures = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_fixtures)

modelscope_dir = _fixtures.modelscope_dir
wan_dir = _fixtures.wan_dir
