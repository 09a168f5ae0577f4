"""vdistill: distil text-to-video diffusion teachers into few-step students."""

__version__ = "0.1.0"
