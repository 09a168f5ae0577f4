"""Lightning callbacks of vdistill (appended from the YAML fragments in the top-level ``callbacks/`` folder)."""

from vdistill.callbacks.export import ExportBackbone

__all__ = ["ExportBackbone"]
