"""Training the toy critics from scratch: CLIP's symmetric InfoNCE with a learnable temperature.

The toy world has only 48 captions, so a batch repeats captions: a plain CLIP loss would treat two videos of
the same caption as negatives of each other. The loss here runs over the batch's DISTINCT captions instead:
video -> text is a cross-entropy over them, and text -> video counts every video of the caption as a positive
(the multi-positive InfoNCE of SupCon, Khosla et al. 2020). Captions that differ in one word are the hard
negatives the world provides for free.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_only
from torch import Tensor, nn
from transformers import get_cosine_with_min_lr_schedule_with_warmup

from vdistill.critics.base import gather_frames, random_frame_indices
from vdistill.critics.registry import CRITICS
from vdistill.critics.report import caption_scores
from vdistill.critics.toy import ToyCritic, save_toy_critic
from vdistill.errors import UserError
from vdistill.training.clipping import ShardedGradientClipping
from vdistill.world.captions import all_captions, parse_caption

TRAINABLE = ("toy-image", "toy-video")


def multi_positive_infonce(emb: Tensor, text: Tensor, labels: Tensor, scale: Tensor | float) -> Tensor:
    """Symmetric InfoNCE between ``N`` embeddings and ``U`` distinct captions, duplicates counted as positives.

    Args:
        emb: L2-normalised video (or frame) embeddings ``[N, D]``.
        text: L2-normalised embeddings of the distinct captions ``[U, D]``.
        labels: caption index of each row of ``emb`` ``[N]`` (every caption has at least one row).
        scale: the logit scale (inverse temperature).

    Returns:
        The mean of the video -> text and text -> video losses (a scalar).
    """
    logits = scale * emb @ text.T  # [N, U]
    to_text = F.cross_entropy(logits, labels)
    positive = labels[:, None] == torch.arange(text.shape[0], device=labels.device)[None]  # [N, U]
    # text -> video: -log of the softmax mass (over all N videos) on the caption's own videos
    to_video = (logits.logsumexp(0) - logits.masked_fill(~positive, float("-inf")).logsumexp(0)).mean()
    return (to_text + to_video) / 2


def caption_labels(prompts: Sequence[str]) -> tuple[list[str], Tensor]:
    """The distinct prompts (first-appearance order) and each prompt's index among them ``[N]``."""
    index: dict[str, int] = {}
    labels = [index.setdefault(p, len(index)) for p in prompts]
    return list(index), torch.tensor(labels)


class CriticTraining(ShardedGradientClipping, L.LightningModule):
    """Train the toy critics (``toy-image``, ``toy-video``) contrastively on toy videos and their captions.

    Each named critic is trained side by side on the same batches, independently (their losses are summed; no
    parameter is shared). The image critic sees ``image_frames`` random frames of each video per step.

    Args:
        critics: which critics to train.
        critic_size: their size (``default`` ships; ``tiny`` for tests).
        lr: AdamW peak learning rate: a linear warm-up from 0, then a cosine decay to ``min_lr_ratio * lr`` at the
            run's last step (transformers' ``get_cosine_with_min_lr_schedule_with_warmup``).
        weight_decay: AdamW weight decay of matrices (gains, biases, embeddings and temperatures are not decayed).
        warmup_steps: warm-up length in optimizer steps.
        min_lr_ratio: final learning rate as a fraction of ``lr``.
        image_frames: frames per video for the image critic per step (each is a row of its own).
        export_dir: where ``<name>.safetensors`` is written at the end of ``fit`` (what ships as
            ``src/vdistill/assets/critics/<name>.safetensors``).
    """

    def __init__(self, critics: tuple[str, ...] = TRAINABLE, critic_size: str = "default", lr: float = 1e-3,
                 weight_decay: float = 0.05, warmup_steps: int = 200, min_lr_ratio: float = 0.05,
                 image_frames: int = 2, export_dir: str | None = None) -> None:
        super().__init__()
        self.save_hyperparameters()
        unknown = sorted(set(critics) - set(TRAINABLE))
        if unknown or not critics:
            raise UserError(f"CriticTraining trains {list(TRAINABLE)}; got {list(critics)}")
        self.critics = nn.ModuleDict({name: CRITICS[name](checkpoint=None, size=critic_size) for name in critics})
        self.critics.requires_grad_(True)
        self.captions = [c.text for c in all_captions()]

    def contrastive_loss(self, critic: ToyCritic, videos: Tensor, prompts: Sequence[str]) -> Tensor:
        """InfoNCE of one critic on pixel videos ``[B, T, 3, H, W]`` in [0, 1] and their ``B`` prompts."""
        distinct, labels = caption_labels(prompts)
        labels = labels.to(videos.device)
        text = critic.embed_text(distinct)
        if critic.kind == "image":
            n = self.hparams.image_frames
            frames = gather_frames(videos, random_frame_indices(videos.shape[0], videos.shape[1], n, videos.device))
            emb, labels = critic.embed_frames(frames.flatten(0, 1)), labels.repeat_interleave(frames.shape[1])
        else:
            emb = critic.embed_video(videos)
        return multi_positive_infonce(emb, text, labels, critic.logit_scale())

    def training_step(self, batch: tuple[Tensor, list[str]], batch_idx: int) -> Tensor:
        videos, prompts = batch
        total = 0.0
        for name, critic in self.critics.items():
            loss = self.contrastive_loss(critic, videos, prompts)
            self.log(f"train/{name}/loss", loss, prog_bar=True, batch_size=len(prompts))
            self.log(f"train/{name}/logit_scale", critic.logit_scale().detach(), batch_size=len(prompts))
            total = total + loss
        return total

    def validation_step(self, batch: tuple[Tensor, list[str]], batch_idx: int) -> None:
        """Caption ranking over all 48 captions (``val/<name>/rank_acc``) and per attribute."""
        videos, prompts = batch
        truth = [parse_caption(p) for p in prompts]
        captions = all_captions()
        for name, critic in self.critics.items():
            top = caption_scores(critic, videos, self.captions).argmax(1).tolist()
            logs = {"rank_acc": [captions[i] == c for i, c in zip(top, truth)],
                    **{a: [getattr(captions[i], a) == getattr(c, a) for i, c in zip(top, truth)]
                       for a in ("colour", "shape", "motion")}}
            for key, hits in logs.items():
                self.log(f"val/{name}/{key}", sum(hits) / len(hits), batch_size=len(hits))

    def configure_optimizers(self):
        hp = self.hparams
        named = list(self.critics.named_parameters())
        decay = [p for n, p in named if p.ndim >= 2 and "embedding" not in n]
        rest = [p for n, p in named if not (p.ndim >= 2 and "embedding" not in n)]
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": hp.weight_decay},
                                 {"params": rest, "weight_decay": 0.0}], lr=hp.lr)
        sched = get_cosine_with_min_lr_schedule_with_warmup(
            opt, hp.warmup_steps, max(1, self.trainer.estimated_stepping_batches), min_lr_rate=hp.min_lr_ratio)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def export(self, folder: str | Path) -> list[Path]:
        """Write each critic to ``folder/<name>.safetensors`` (loadable with ``load_critic(name, checkpoint=...)``)."""
        return [save_toy_critic(critic, Path(folder) / f"{name}.safetensors") for name, critic in self.critics.items()]

    @rank_zero_only
    def on_fit_end(self) -> None:
        if self.hparams.export_dir:
            for path in self.export(self.hparams.export_dir):
                print(f"wrote {path}")
