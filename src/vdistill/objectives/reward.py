"""Mixed reward feedback (T2V-Turbo, arXiv 2405.18750 Sec. 4.2; v2: 2410.05677).

The student's single-step x0 prediction is decoded through the VAE WITH gradients, mapped to pixels in [0, 1] and
scored by a weighted mix of frozen critics: ``loss = -sum_i beta_i * mean(score_i)`` (no backprop through a
sampling chain). Image critics score ``M`` random frames, video critics ``n`` evenly strided frames (each critic
selects its own frames, see :mod:`vdistill.critics.base`). T2V-Turbo's weights: v1 VideoCrafter2
``{hpsv2: 1, internvideo2: 2}``, v1 ModelScope ``{hpsv2: 2, viclip: 3}``; v2 ``{hpsv2: 0.2, clipscore: 0.2,
internvideo2: 0.5}``.

Where the x0 prediction comes from (``source``):

* ``cache``: the x0 prediction an objective that already ran the student left in ``models.cache["consistency"]``
  (``.x0``: latents ``[B, C, T, H, W]`` with gradient, in batch order): consistency distillation's, which is
  what T2V-Turbo scores;
* ``trajectory``: one random noisier key point per sample of a trajectory batch; the trajectory objective's
  cached predictions (``models.cache["key_points"]``) are reused when it ran first;
* ``videos``: real videos (``batch["videos"]`` ``[B, T, 3, H, W]`` in [0, 1]; their latents cached by
  consistency distillation are reused) noised to a random time (one of the student's key timesteps when it has
  them) and denoised by the student once;
* ``auto`` (default): the first of these the batch and cache allow.

``decode_subset``: the VAE decodes only the frames the critics score (T2V-Turbo's image critics score 2-6 of 16
frames). Each critic's frames are drawn first, as the critic itself draws them (same functions, same order of
random draws), the family's :meth:`~vdistill.backbones.base.Backbone.decode_frames` decodes them, and each critic
gets exactly its frames (a critic given its frame count of frames scores all of them, in order): the scores equal
those of the whole decode. ModelScope's per-frame image VAE (and the toy's) decodes each needed frame once; Wan's
causal 3D VAE decodes the latent frames up to the last one needed (later ones cannot change earlier pixels); for
HunyuanVideo, whose VAE decode is not causal that way, the whole video is decoded and the frames picked.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from vdistill.critics.base import Critic, random_frame_indices, strided_frame_indices
from vdistill.errors import UserError
from vdistill.objectives.base import Models, Objective
from vdistill.objectives.trajectory import KeyPointPredictions

#: the cache key under which an objective leaves the student's x0 prediction (an object with ``.x0``: latents
#: ``[B, C, T, H, W]`` with gradient; :class:`~vdistill.objectives.consistency.ConsistencyPrediction`)
STUDENT_X0 = "consistency"
SOURCES = ("auto", "cache", "trajectory", "videos")


def batch_prompts(batch: Any) -> list[str]:
    """The prompts of a batch: ``batch["prompt"]`` / ``batch["prompts"]``, or the second item of a tuple."""
    if isinstance(batch, Mapping):
        for key in ("prompt", "prompts"):
            if key in batch:
                return list(batch[key])
        raise UserError(f"reward feedback needs the prompts of a batch; it has only {sorted(batch)}")
    return list(batch[1])


def batch_videos(batch: Any) -> Tensor | None:
    """Real pixel videos ``[B, T, 3, H, W]`` of a batch (``batch["videos"]`` or a ``(videos, prompts)`` tuple)."""
    if isinstance(batch, Mapping):
        return batch.get("videos")
    return batch[0] if isinstance(batch, (tuple, list)) and isinstance(batch[0], Tensor) else None


def key_point_x0(kp: KeyPointPredictions, j: Tensor, models: Models) -> Tensor:
    """x0 ``[B, C, T, H, W]`` from the trajectory objective's cached predictions, at key point ``j[b]`` ``[B]`` of
    each sample ``b`` (its rows are sample-major, ``B * (K - 1)``)."""
    rows = torch.arange(j.shape[0], device=j.device) * kp.pairs + j
    return models.student.schedule.to_x0(kp.raw[rows].float(), kp.x[rows], kp.t[rows])


def _from_trajectory(batch: Mapping, models: Models) -> Tensor:
    """x0 ``[B, C, T, H, W]`` from one random noisier key point per sample (see the module doc)."""
    latents, times = batch["latents"], batch["timesteps"]
    b, k = latents.shape[:2]
    j = torch.randint(0, k - 1, (b,), device=latents.device)
    if "key_points" in models.cache:  # the trajectory objective already ran the student there
        return key_point_x0(models.cache["key_points"], j, models)
    rows = torch.arange(b, device=latents.device)
    x, t = latents[rows, j].float(), times[rows, j].float()
    return models.student.schedule.to_x0(models.student_raw(x, t, batch["text"]).float(), x, t)


def _from_videos(videos: Tensor, prompts: list[str], batch: Any, models: Models) -> Tensor:
    """x0 ``[B, C, T, H, W]``: the student's one-step denoising of the real ``videos`` noised to a random time."""
    student = models.student
    clips = models.cache.get("videos")  # consistency distillation's encoded clips (``.x0``, ``.text``)
    if clips is not None:
        x0, text = clips.x0, clips.text
    else:
        with torch.no_grad():  # the VAE and text encoder are frozen
            x0 = student.encode_video(videos).float()
            text = student.encode_text(prompts)
    b = x0.shape[0]
    if student.key_timesteps is not None:
        keys = torch.tensor(student.key_timesteps[:-1], device=x0.device)
        t = keys[torch.randint(0, len(keys), (b,), device=x0.device)]
    else:
        t = student.schedule.sample_training_timesteps(b).to(x0.device)
    x_t = student.schedule.add_noise(x0, torch.randn_like(x0), t)
    return student.schedule.to_x0(models.student_raw(x_t, t, text).float(), x_t, t)


def student_x0(batch: Any, models: Models, source: str = "auto") -> Tensor:
    """The student's single-step x0 prediction (latents ``[B, C, T, H, W]``, with gradient); see the module doc."""
    if source in ("auto", "cache") and STUDENT_X0 in models.cache:
        return models.cache[STUDENT_X0].x0
    is_traj = isinstance(batch, Mapping) and "latents" in batch and "timesteps" in batch
    if source in ("auto", "trajectory") and is_traj:
        return _from_trajectory(batch, models)
    videos = batch_videos(batch)
    if source in ("auto", "videos") and videos is not None:
        return _from_videos(videos, batch_prompts(batch), batch, models)
    raise UserError(f"reward feedback (source={source!r}) found no x0 prediction: no models.cache[{STUDENT_X0!r}] "
                    "from another objective, no trajectory key points and no real videos in the batch")


class RewardFeedback(Objective):
    """T2V-Turbo's mixed reward feedback: critics score the student's decoded one-step x0 prediction.

    Args:
        critics: ``{name: beta}``; each name is a critic the distillation module holds (``model.critics``).
        weight: multiplies the whole sum (the betas already weight each critic; keep 1).
        source: where the x0 prediction comes from: ``auto``, ``cache``, ``trajectory`` or ``videos``.
        decode_subset: decode only the frames the critics score (module docstring): the same scores, a fraction
            of the VAE decode's compute and activation memory.

    Returns ``reward_<name>`` = ``-beta * mean(score)`` per critic (the loss terms, logged as
    ``loss/reward_<name>``) and ``<name>`` = the mean score itself (logged as ``reward/<name>``).
    """

    name = "reward"
    needs = frozenset({"critics"})

    def __init__(self, critics: dict[str, float], weight: float = 1.0, source: str = "auto",
                 decode_subset: bool = False) -> None:
        super().__init__(weight)
        if not critics:
            raise UserError("RewardFeedback.critics is empty: give {critic name: beta}, e.g. {toy-video: 1.0}")
        if source not in SOURCES:
            raise UserError(f"unknown reward source {source!r}; valid choices: {', '.join(SOURCES)}")
        self.betas = {str(name): float(beta) for name, beta in critics.items()}
        self.source = source
        self.decode_subset = bool(decode_subset)
        self.critic_names = tuple(self.betas)
        self.loss_terms = tuple(f"reward_{name}" for name in self.betas)

    def forward(self, batch: Any, models: Models) -> dict[str, Tensor]:
        check_critic_names([self], models.critics or {})
        prompts = batch_prompts(batch)
        x0 = student_x0(batch, models, self.source)
        if self.decode_subset:
            videos = scored_frames(models.student, x0, {n: models.critics[n] for n in self.betas})
        else:
            pixels = models.student.decode_latents(x0)  # [B, T, 3, H, W]
            videos = dict.fromkeys(self.betas, pixels)
        out: dict[str, Tensor] = {}
        for name, beta in self.betas.items():
            score = models.critics[name](videos[name], prompts)
            out[f"reward_{name}"] = -beta * score.mean()
            out[name] = score.detach().mean()
        return out

    def extra_repr(self) -> str:
        return (f"critics={self.betas}, weight={self.weight:g}, source={self.source!r}"
                + (", decode_subset=True" if self.decode_subset else ""))


def critic_frame_indices(critic: Critic, batch: int, total: int, device: torch.device) -> Tensor:
    """``[batch, n]`` indices of the frames ``critic`` scores in videos of ``total`` frames, drawn as its own
    :meth:`~vdistill.critics.base.Critic.select_frames` draws them (random frames for image critics, strided ones
    for video critics)."""
    if not isinstance(critic, Critic):
        raise UserError(f"decode_subset needs critics that say which frames they score; {type(critic).__name__} "
                        "is not a vdistill Critic: set decode_subset: false")
    pick = random_frame_indices if critic.kind == "image" else strided_frame_indices
    return pick(batch, total, critic.frames, device)


def scored_frames(student, x0: Tensor, critics: Mapping[str, Critic]) -> dict[str, Tensor]:
    """``{critic name: pixels [B, n, 3, H, W]}``: the frames each critic scores, decoded from latents ``x0``
    ``[B, C, T', h, w]`` by the student's :meth:`~vdistill.backbones.base.Backbone.decode_frames` in one call (the
    critics' frames drawn in their order, before any decoding, as :meth:`RewardFeedback.forward` without
    ``decode_subset`` draws them)."""
    b, total = x0.shape[0], student.pixel_frames(x0.shape[2])
    picks = {name: critic_frame_indices(critic, b, total, x0.device) for name, critic in critics.items()}
    pixels = student.decode_frames(x0, torch.cat(list(picks.values()), dim=1))
    return dict(zip(picks, pixels.split([p.shape[1] for p in picks.values()], dim=1)))


def check_critic_names(objectives: Iterable[nn.Module], critics: Mapping[str, nn.Module]) -> None:
    """A :class:`UserError` for each objective naming critics (``critic_names``) that ``critics`` lacks."""
    for obj in objectives:
        missing = [n for n in getattr(obj, "critic_names", ()) if n not in critics]
        if missing:
            raise UserError(f"{type(obj).__name__} uses critics {missing}, but model.critics has "
                            f"{sorted(critics) or 'none'}; add them, e.g. "
                            f"critics: {{{missing[0]}: {{checkpoint: ...}}}}")
