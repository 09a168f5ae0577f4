"""The tiny distillation setting of ``tests/modules/test_distill.py`` (a tiny toy flow teacher exported to
``teacher/`` and its key points in ``data/``), reused here without copying it."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS / "objectives"))  # objective_helpers, which test_distill imports
sys.path.insert(0, str(Path(__file__).resolve().parent))  # callback_helpers

_spec = importlib.util.spec_from_file_location("vdistill_tests_distill", TESTS / "modules" / "test_distill.py")
_distill = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_distill)

toy = _distill.toy  # module-scoped fixture: the teacher folder and its trajectory data
