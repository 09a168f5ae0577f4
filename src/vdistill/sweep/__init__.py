"""Ablation sweeps: a grid (or list) of config fragments, each a ``vdistill fit`` run in its own folder.

* :mod:`vdistill.sweep.spec`: the sweep file -> named runs (grid expansion, names, checks),
* :mod:`vdistill.sweep.runs`: a run's folder (resolved config, attempt record, completion marker, checkpoints),
* :mod:`vdistill.sweep.results`: final scalars from TensorBoard event files -> ``results.csv`` / ``results.md``,
* :mod:`vdistill.commands.sweep`: ``vdistill sweep`` (runs one after another, skip / resume / rerun).
"""

from __future__ import annotations

from vdistill.sweep.spec import Run, Sweep, load_sweep

__all__ = ["Run", "Sweep", "load_sweep"]
