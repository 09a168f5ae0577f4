"""The captions file of the latent-cache tests."""

from __future__ import annotations

#: (file, caption, source frames): 6 readable clips, one corrupt file, one too short, one row with no caption
ROWS = [("v0.mp4", "a red circle moving left", 24), ("v1.mp4", "a blue square moving up", 30),
        ("bad.mp4", "a green triangle moving right", 0), ("v2.webm", "a blue circle moving down", 24),
        ("short.mp4", "a red square moving up", 3), ("v3.mp4", "", 24),
        ("v4.gif", "a green square moving left", 20), ("v5.mp4", "a red triangle moving up", 26),
        ("v6.mp4", "a blue triangle moving left", 24)]
