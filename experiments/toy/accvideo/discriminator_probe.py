"""What the AccVideo discriminator's clean-point head gets to see, measured on a trajectory set and its student.

    python experiments/toy/accvideo/discriminator_probe.py --synvid runs/demo_paired/synvid \
        --student runs/demo_paired/train/export

On the trajectories' OWN noise it prints the oracle quality of (a) the teacher's clean key latents (the reals),
(b) the student's one step from the teacher's previous key latent (AccVideo's paired fakes), (c) the student's full
m-step sample; and how far (b) and (c) lie from (a) in the teacher features the clean-point head reads (mean
absolute difference over mean absolute value).
"""

from __future__ import annotations

import argparse

import torch

from vdistill.backbones.io import load_backbone
from vdistill.data.trajectories import TrajectoryDataset, collate
from vdistill.roles.discriminator import Discriminator
from vdistill.sampling.sampler import sample_latents
from vdistill.world.toybench import evaluate


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--synvid", required=True, help="a `vdistill synth` folder")
    p.add_argument("--student", required=True, help="the student trained on it (an export folder)")
    p.add_argument("--teacher", default="toy-flow")
    args = p.parse_args()
    ds = TrajectoryDataset(args.synvid)
    teacher = load_backbone(args.teacher).eval().requires_grad_(False)
    student = load_backbone(args.student).eval().requires_grad_(False)
    data = collate([ds[i] for i in range(len(ds))])
    lat = data["latents"].float()  # [N, K, C, T, H, W]
    text, prompts, ts = data["text"], data["prompt"], data["timesteps"][0].float()
    n = len(lat)
    with torch.no_grad():
        real = lat[:, -1]
        t_prev = ts[-2].expand(n)
        raw = student.predict(lat[:, -2], t_prev, text, None, 1.0, None).float()
        paired = student.schedule.step(raw, lat[:, -2], t_prev, ts[-1].expand(n))
        sample = sample_latents(student, lat[:, 0], text, timesteps=ts).latents.float()
        for name, x in (("teacher clean key latents (real)", real), ("student one step from teacher key", paired),
                        ("student m-step sample", sample)):
            r = evaluate(student.decode_latents(x), prompts).overall
            print(f"{name:36s} semantic {r['semantic']:.3f} quality {r['quality']:.3f}")
        disc = Discriminator()
        disc.bind(teacher, ts[1:].tolist())
        block, t0 = disc.blocks[-1], ts[-1].expand(n)
        f_real = disc.features(real, t0, text, block)
        for name, x in (("paired fakes", paired), ("m-step samples", sample)):
            gap = float((f_real - disc.features(x, t0, text, block)).abs().mean() / f_real.abs().mean())
            print(f"clean-point head features (block {block}): {name} differ from the reals by {100 * gap:.1f}%")


if __name__ == "__main__":
    main()
