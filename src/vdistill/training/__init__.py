"""What the Lightning modules need around a training step: exact-resume state (RNG, per-rank state) and gradient
clipping under sharded strategies."""
