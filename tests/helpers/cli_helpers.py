"""Running ``vdistill`` in-process as if typed on the command line (shared by the CLI and sweep tests)."""

from __future__ import annotations

import sys

from vdistill.cli import main


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    """``(exit code, stdout, stderr)`` of ``vdistill ARGS``; ``sys.argv`` is restored afterwards."""
    saved, sys.argv = sys.argv, ["vdistill", *args]
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    finally:
        sys.argv = saved
    out = capsys.readouterr()
    return code, out.out, out.err
