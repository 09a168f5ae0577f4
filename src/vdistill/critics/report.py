"""How well a critic reads the toy world: caption ranking on real toy videos, agreement with the oracle.

* **Caption ranking**: each real toy video is scored against all 48 toy captions; top-1 accuracy, and per
  attribute whether the top caption has the right colour / shape / motion. An image critic sees one frame at a
  time and cannot tell motion, so ``visible_accuracy`` counts only the attributes a critic can see (colour and
  shape for image critics, all three for video critics).
* **Oracle agreement**: on given (video, prompt) pairs (e.g. a model's samples), the Pearson and Spearman
  correlation of the critic's score with the oracle's semantic accuracy (mean of colour / shape / motion
  correctness, :mod:`vdistill.world.toybench`). Without samples, real videos paired with captions that have 0-3
  attributes swapped give a controlled spread of semantic accuracy.

``vdistill critic-report --critic toy-video --checkpoint shipped [--samples videos.npz ...]`` prints both
(:mod:`vdistill.commands.critic_report`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from vdistill.critics.base import Critic
from vdistill.world.captions import COLOURS, MOTIONS, SHAPES, Caption, all_captions, parse_caption
from vdistill.world.render import WorldConfig, render_batch
from vdistill.world.toybench import ATTRIBUTES, evaluate


@torch.no_grad()
def caption_scores(critic: Critic, videos: Tensor, captions: Sequence[str], batch_size: int = 256) -> Tensor:
    """Cosine of every video ``[N, T, 3, H, W]`` (in [0, 1]) with every caption: ``[N, len(captions)]``.

    Image critics average over ALL frames (deterministic, unlike their random-frame reward score).
    """
    text = critic.embed_text(list(captions))
    rows = []
    for chunk in videos.split(batch_size):
        chunk = chunk.to(critic.device)
        if critic.kind == "image":
            b, t = chunk.shape[:2]
            emb = critic.embed_frames(chunk.flatten(0, 1)).view(b, t, -1)
            rows.append((emb @ text.T).mean(1).cpu())
        else:
            rows.append((critic.embed_video(chunk) @ text.T).cpu())
    return torch.cat(rows)


def caption_ranking(critic: Critic, videos: Tensor, prompts: Sequence[str], batch_size: int = 256) -> dict:
    """Top-1 accuracy over the 48 toy captions and the top caption's per-attribute accuracy (see module doc)."""
    captions = all_captions()
    top = caption_scores(critic, videos, [c.text for c in captions], batch_size).argmax(dim=1)
    truth = [parse_caption(p) for p in prompts]
    hits = {a: np.mean([getattr(captions[i], a) == getattr(c, a) for i, c in zip(top.tolist(), truth)])
            for a in ATTRIBUTES}
    exact = np.mean([captions[i] == c for i, c in zip(top.tolist(), truth)])
    visible = ATTRIBUTES if critic.kind == "video" else ("colour", "shape")
    seen = np.mean([all(getattr(captions[i], a) == getattr(c, a) for a in visible)
                    for i, c in zip(top.tolist(), truth)])
    return {"accuracy": float(exact), "visible_accuracy": float(seen), **{a: float(v) for a, v in hits.items()},
            "n": len(prompts)}


def correlations(scores: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """Pearson's r and Spearman's rho (ties at their average rank) of two score vectors, by torchmetrics; NaN when
    either vector is constant (no correlation is defined)."""
    from torchmetrics.functional import pearson_corrcoef, spearman_corrcoef

    if scores.std() == 0 or target.std() == 0:
        return {"pearson": float("nan"), "spearman": float("nan")}
    a, b = torch.as_tensor(scores, dtype=torch.float64), torch.as_tensor(target, dtype=torch.float64)
    return {"pearson": float(pearson_corrcoef(a, b)), "spearman": float(spearman_corrcoef(a, b))}


@torch.no_grad()
def oracle_agreement(critic: Critic, videos: Tensor, prompts: Sequence[str], batch_size: int = 256) -> dict:
    """Correlation of the critic's score (video ``i`` vs prompt ``i``) with the oracle's semantic accuracy."""
    semantic = np.array([np.mean(list(r.correct(parse_caption(p)).values()))
                         for r, p in zip(evaluate(videos, prompts).readings, prompts)])
    scores = torch.cat([critic(v.to(critic.device), list(p)).cpu()
                        for v, p in zip(videos.split(batch_size), _chunks(prompts, batch_size))]).numpy()
    return {**correlations(scores, semantic),
            "mean_score": float(scores.mean()), "mean_semantic": float(semantic.mean()), "n": len(prompts)}


def _chunks(items: Sequence[str], size: int) -> list[Sequence[str]]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def real_videos(per_caption: int = 20, seed: int = 20_000, world: WorldConfig = WorldConfig()) -> tuple[Tensor, list]:
    """``per_caption`` rendered videos of each of the 48 captions: ``[48 * per_caption, T, 3, H, W]`` and prompts."""
    captions = all_captions() * per_caption
    return render_batch(captions, seed, world), [c.text for c in captions]


def perturbed_prompts(prompts: Sequence[str], seed: int = 0) -> list[str]:
    """Each caption with 0, 1, 2 or 3 attributes (uniformly many, random which) replaced by another value."""
    rng = np.random.default_rng(seed)
    choices = {"colour": list(COLOURS), "shape": list(SHAPES), "motion": list(MOTIONS)}
    out = []
    for prompt in prompts:
        values = dict(vars(parse_caption(prompt)))
        for attr in rng.permutation(ATTRIBUTES)[: rng.integers(0, 4)]:
            values[attr] = rng.choice([v for v in choices[attr] if v != values[attr]])
        out.append(Caption(**values).text)
    return out


def critic_report(critic: Critic, videos: Tensor, prompts: Sequence[str],
                  samples: dict[str, tuple[Tensor, Sequence[str]]] | None = None) -> dict:
    """Caption ranking on real ``videos`` / ``prompts``, oracle agreement on them with perturbed captions, and
    oracle agreement on each named set of ``samples`` (``{name: (videos, prompts)}``)."""
    report = {"ranking": caption_ranking(critic, videos, prompts),
              "agreement": {"perturbed captions": oracle_agreement(critic, videos, perturbed_prompts(prompts))}}
    for name, (v, p) in (samples or {}).items():
        report["agreement"][name] = oracle_agreement(critic, v, p)
    return report
