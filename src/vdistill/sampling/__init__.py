"""Sampling and writing videos."""
