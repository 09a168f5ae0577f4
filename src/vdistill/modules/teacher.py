"""Training a teacher from scratch (the toy world's teachers): the plain diffusion / flow-matching loss."""

from __future__ import annotations

import lightning as L
import torch
from torch import Tensor
from transformers import get_cosine_with_min_lr_schedule_with_warmup

from vdistill.backbones.base import Backbone
from vdistill.config import to_config
from vdistill.training.clipping import ShardedGradientClipping


class TeacherTraining(ShardedGradientClipping, L.LightningModule):
    """Denoising loss in the backbone's own parameterisation: MSE between the raw prediction at a random time and
    the matching target (``eps`` for DDPM-eps, ``v`` for DDPM-v, the velocity ``eps - x0`` for flow).

    Args:
        backbone: the model to train.
        lr: AdamW peak learning rate: a linear warm-up from 0, then a cosine decay to ``min_lr_ratio * lr`` at the
            run's last step (transformers' ``get_cosine_with_min_lr_schedule_with_warmup``).
        weight_decay: AdamW weight decay.
        warmup_steps: warm-up length in optimizer steps.
        min_lr_ratio: final learning rate as a fraction of ``lr``.
        caption_dropout: probability of replacing a caption by the empty prompt (trains the unconditional
            branch that classifier-free guidance needs).
        train_text_encoder: train the text encoder jointly (the toy teacher's small encoder); real teachers keep
            theirs frozen.
    """

    def __init__(self, backbone: Backbone, lr: float = 1.5e-3, weight_decay: float = 0.0, warmup_steps: int = 200,
                 min_lr_ratio: float = 0.05, caption_dropout: float = 0.1, train_text_encoder: bool = True) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["backbone"])
        self.backbone = backbone
        if train_text_encoder and getattr(backbone, "text_encoder", None) is not None:
            backbone.text_encoder.requires_grad_(True)
            backbone.text_encoder.train()

    def denoising_loss(self, videos: Tensor, prompts: list[str], generator: torch.Generator | None = None) -> Tensor:
        """MSE of the raw prediction for pixel videos ``[B, T, 3, H, W]`` at random times and noise."""
        schedule = self.backbone.schedule
        x0 = self.backbone.encode_video(videos)
        t = schedule.sample_training_timesteps(x0.shape[0], generator).to(self.device)
        noise = torch.randn(x0.shape, generator=generator).to(x0)
        x_t = schedule.add_noise(x0, noise, t)
        raw = self.backbone(x_t, t, self.backbone.encode_text(prompts))
        return torch.nn.functional.mse_loss(raw.float(), schedule.from_x0_eps(x0, noise, t).float())

    def training_step(self, batch: tuple[Tensor, list[str]], batch_idx: int) -> Tensor:
        videos, prompts = batch
        drop = torch.rand(len(prompts)) < self.hparams.caption_dropout
        loss = self.denoising_loss(videos, ["" if d else p for p, d in zip(prompts, drop.tolist())])
        self.log("train/loss", loss, prog_bar=True, batch_size=len(prompts))
        return loss

    def validation_step(self, batch: tuple[Tensor, list[str]], batch_idx: int) -> Tensor:
        # Fixed times and noise per batch: the validation loss is comparable across checkpoints.
        loss = self.denoising_loss(*batch, generator=torch.Generator().manual_seed(batch_idx))
        self.log("val/loss", loss, prog_bar=True, batch_size=len(batch[1]))
        return loss

    def test_step(self, batch: tuple[Tensor, list[str]], batch_idx: int) -> Tensor:
        loss = self.denoising_loss(*batch, generator=torch.Generator().manual_seed(batch_idx))
        self.log("test/loss", loss, batch_size=len(batch[1]))
        return loss

    def predict_step(self, batch: list[str], batch_idx: int) -> Tensor:
        """Videos ``[B, T, 3, H, W]`` for a batch of prompts, with the backbone's own steps and CFG."""
        from vdistill.sampling.generate import generate

        return generate(self.backbone, list(batch), seed=batch_idx * len(batch), progress=False).videos

    def configure_optimizers(self):
        params = [p for p in self.backbone.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        sched = get_cosine_with_min_lr_schedule_with_warmup(
            opt, self.hparams.warmup_steps, max(1, self.trainer.estimated_stepping_batches),
            min_lr_rate=self.hparams.min_lr_ratio)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["vdistill_backbone"] = to_config(self.backbone)
