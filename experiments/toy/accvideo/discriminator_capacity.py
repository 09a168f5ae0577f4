"""Can a discriminator head tell a student's samples from the teacher's, and from which teacher block?

    python experiments/toy/accvideo/discriminator_capacity.py --synvid runs/toy/accvideo/synvid_m2 \
        --student runs/toy/accvideo_scale/m2_traj_6k_b64/export

Reals: the clean key latents of the trajectory set. Fakes: the student's own samples from FRESH noise (seeds
``--seed`` + i) for the same prompts. Both are read by the frozen teacher at ``t = 0`` (the clean-point head's
input) and at ``--noisy-t`` after re-noising with the same noise (what a head at a noisier key timestep would see);
for every teacher block a fresh :class:`~vdistill.roles.discriminator.DiscriminatorHead` is trained on the
block's features of 3/4 of the pairs (features computed once: the teacher is frozen) and its accuracy measured on the
other 1/4. 50% = the block gives the head nothing to go on. The AccVideo default reads the middle block at t = 0 and
the last block at t > 0.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from vdistill.backbones.io import load_backbone
from vdistill.data.trajectories import TrajectoryDataset, collate
from vdistill.roles.discriminator import DiscriminatorHead
from vdistill.sampling.sampler import sample_latents
from vdistill.world.toybench import evaluate


def all_block_features(teacher, x: torch.Tensor, t: float, text: dict, batch: int = 64) -> list[torch.Tensor]:
    """Every feature block's per-frame maps ``[N, T', C, h, w]`` for latents ``x`` at time ``t``, one forward."""
    blocks = teacher.feature_blocks()
    out: list[list[torch.Tensor]] = [[] for _ in blocks]
    for i in range(0, len(x), batch):
        xb, tb = x[i:i + batch], {k: v[i:i + batch] for k, v in text.items()}
        captured: list = []
        handles = [b.register_forward_hook(lambda _m, _i, o, c=captured: c.append(o)) for b in blocks]
        try:
            teacher(xb, torch.full((len(xb),), t), tb)
        finally:
            for h in handles:
                h.remove()
        for j, o in enumerate(captured):
            out[j].append(teacher.feature_frames(o, xb))
    return [torch.cat(o) for o in out]


def head_accuracy(real: torch.Tensor, fake: torch.Tensor, hidden: int, steps: int, lr: float) -> float:
    """Held-out accuracy of a fresh head trained with the non-saturating GAN discriminator loss."""
    n = len(real)
    cut = n * 3 // 4
    head = DiscriminatorHead(real.shape[2], hidden)
    opt = torch.optim.Adam(head.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        idx = torch.randint(0, cut, (32,), generator=gen)
        loss = F.softplus(-head(real[idx])).mean() + F.softplus(head(fake[idx])).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        correct = (head(real[cut:]) > 0).float().sum() + (head(fake[cut:]) < 0).float().sum()
    return float(correct / (2 * (n - cut)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--synvid", required=True, help="a `vdistill synth` folder (its clean key latents are the reals)")
    p.add_argument("--student", required=True, help="a student export folder (its samples are the fakes)")
    p.add_argument("--teacher", default="toy-flow")
    p.add_argument("--seed", type=int, default=20_000, help="first noise seed of the fakes")
    p.add_argument("--noisy-t", type=float, default=0.5)
    p.add_argument("--hidden", type=int, default=32, help="the head's channels (the toy recipe's)")
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--lr", type=float, default=1e-3)
    args = p.parse_args()
    torch.manual_seed(0)
    ds = TrajectoryDataset(args.synvid, dtype=torch.float32)
    teacher = load_backbone(args.teacher).eval().requires_grad_(False)
    student = load_backbone(args.student).eval().requires_grad_(False)
    data = collate([ds[i] for i in range(len(ds))])
    real, text, prompts = data["latents"][:, -1], data["text"], data["prompt"]
    noise = torch.stack([torch.randn(real.shape[1:], generator=torch.Generator().manual_seed(args.seed + i))
                         for i in range(len(real))])
    with torch.no_grad():
        fake = sample_latents(student, noise, text).latents.float()
        for name, x in (("reals (teacher clean key latents)", real), ("fakes (student samples, fresh noise)", fake)):
            r = evaluate(student.decode_latents(x), prompts).overall
            print(f"{name:38s} semantic {r['semantic']:.3f} quality {r['quality']:.3f}")
        eps = torch.randn(real.shape, generator=torch.Generator().manual_seed(1))
        t = args.noisy_t
        noisy = [teacher.schedule.add_noise(x, eps, torch.full((len(x),), t)) for x in (real, fake)]
        feats = {0.0: (all_block_features(teacher, real, 0.0, text), all_block_features(teacher, fake, 0.0, text)),
                 t: (all_block_features(teacher, noisy[0], t, text), all_block_features(teacher, noisy[1], t, text))}
    nblocks = len(teacher.feature_blocks())
    print(f"held-out accuracy of a fresh head (hidden {args.hidden}, {args.steps} steps), per teacher block:")
    print("| block | channels x size | t = 0 | t = " + f"{t:g} |\n| ---: | --- | ---: | ---: |")
    for b in range(nblocks):
        f0 = feats[0.0][0][b]
        accs = [head_accuracy(feats[tt][0][b], feats[tt][1][b], args.hidden, args.steps, args.lr) for tt in (0.0, t)]
        mark = " (default t = 0)" if b == nblocks // 2 else " (default t > 0)" if b == nblocks - 1 else ""
        print(f"| {b}{mark} | {f0.shape[2]} x {f0.shape[-2]}x{f0.shape[-1]} | {accs[0]:.3f} | {accs[1]:.3f} |")
    # no teacher at all: the same head on the latents themselves (frames; in the toy world, the pixels)
    frames = [[x.transpose(1, 2) for x in pair] for pair in ((real, fake), noisy)]
    accs = [head_accuracy(r, f, args.hidden, args.steps, args.lr) for r, f in frames]
    size = f"{real.shape[1]} x {real.shape[-2]}x{real.shape[-1]}"
    print(f"| input (the latents) | {size} | {accs[0]:.3f} | {accs[1]:.3f} |")


if __name__ == "__main__":
    main()
