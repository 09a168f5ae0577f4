"""What the per-shard checksum of ``TrajectoryData(verify=True)`` costs (docs/security.md).

    .venv/bin/python experiments/bench/verify_cost.py [--out runs/verify_cost] [--repeats 3]

Times ``file_sha256`` on 1 GiB of random bytes (from the page cache), then one epoch over a small synthesised
toy set (128 trajectories of 16 x 64 x 64 latents, 3 key points, float32, 16 per shard) with the check off and
on, alternating, in one process; prints each time and the median ratio.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from vdistill.backbones.toy import ToyBackbone
from vdistill.data.shards import file_sha256
from vdistill.data.trajectories import TrajectoryDataset, collate
from vdistill.diffusion.schedules import FlowSchedule
from vdistill.synth import synthesize


def hash_rate(folder: Path) -> float:
    blob = folder / "blob.bin"
    with open(blob, "wb") as f:
        for _ in range(16):
            f.write(os.urandom(64 << 20))
    file_sha256(blob)  # into the page cache
    start = time.perf_counter()
    file_sha256(blob)
    seconds = time.perf_counter() - start
    size = blob.stat().st_size
    blob.unlink()
    return size / seconds


def epoch(root: Path, verify: bool) -> float:
    ds = TrajectoryDataset(root, verify=verify)  # a fresh dataset: nothing verified yet
    start = time.perf_counter()
    for _ in DataLoader(ds, batch_size=8, shuffle=True, collate_fn=collate):
        pass
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/verify_cost")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"sha256: {hash_rate(out) / 1e9:.2f} GB/s (1 GiB, page cache)")
    root = out / "set"
    if not (root / "manifest.json").is_file():
        torch.manual_seed(0)
        teacher = ToyBackbone(schedule=FlowSchedule(shift=3.0), base_channels=8, channel_mult=(1, 2), emb_dim=16,
                              text_dim=16, num_frames=16, size=64, steps=2).eval()
        synthesize(teacher, [f"a red circle moving left {i}" for i in range(128)], root, key_indices=(0, 1, 2),
                   steps=2, dtype="float32", shard_size=16, batch_size=16, progress=False)
    size = sum(p.stat().st_size for p in root.glob("shard-*"))
    times = {False: [], True: []}
    for _ in range(args.repeats):
        for verify in (False, True):
            times[verify].append(epoch(root, verify))
    off, on = (statistics.median(times[v]) for v in (False, True))
    print(f"one epoch over {size / 1e6:.0f} MB: verify off {off:.2f} s, on {on:.2f} s (median of {args.repeats}; "
          f"ratio {on / off:.2f}); off: {', '.join(f'{t:.2f}' for t in times[False])}; "
          f"on: {', '.join(f'{t:.2f}' for t in times[True])}")


if __name__ == "__main__":
    main()
