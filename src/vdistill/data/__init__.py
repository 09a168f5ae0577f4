"""Datamodules and prompt lists."""
