"""Datamodule of procedural toy videos with captions (drawn uniformly over the 48 captions)."""

from __future__ import annotations

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from vdistill.data.resumable import resumable_loader
from vdistill.errors import UserError
from vdistill.world.captions import all_captions, toy_prompts
from vdistill.world.render import WorldConfig, render


class ToyVideoDataset(Dataset):
    """Item ``i``: ``(video [T, 3, H, W] in [0, 1], caption)``, deterministic in ``(seed, i)``."""

    def __init__(self, length: int, seed: int = 0, world: WorldConfig = WorldConfig()) -> None:
        self.length, self.seed, self.world = length, seed, world
        self.captions = all_captions()

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> tuple[torch.Tensor, str]:
        rng = np.random.default_rng([self.seed, i])
        caption = self.captions[rng.integers(len(self.captions))]
        return torch.from_numpy(render(caption, rng, self.world)), caption.text


class ToyVideos(L.LightningDataModule):
    """Toy-world training videos.

    Args:
        batch_size: videos per batch.
        samples_per_epoch: length of one epoch (the world is infinite; this only paces epochs and logging).
        num_frames, size: video size (defaults 8 frames of 16x16).
        seed: data seed.
        num_workers: DataLoader workers (rendering is cheap: 0 is fine on CPU).
        val_samples: videos in the fixed validation and test sets.

    Training batches are ``(videos [B, T, 3, H, W] in [0, 1], prompts)``: the real clips that consistency
    distillation needs (``provides``).
    """

    provides = ("videos",)

    def __init__(self, batch_size: int = 16, samples_per_epoch: int = 16_000, num_frames: int = 8, size: int = 16,
                 seed: int = 0, num_workers: int = 0, val_samples: int = 256) -> None:
        super().__init__()
        for name, value, least in (("batch_size", batch_size, 1), ("num_workers", num_workers, 0)):
            if value < least:
                raise UserError(f"data {name} is {value}; it must be at least {least}")
        self.save_hyperparameters()
        self.world = WorldConfig(num_frames=num_frames, size=size)

    def _fixed(self, seed: int, n: int) -> DataLoader:
        return DataLoader(ToyVideoDataset(n, seed, self.world), batch_size=self.hparams.batch_size, shuffle=False)

    def val_dataloader(self) -> DataLoader:
        return self._fixed(10_000 + self.hparams.seed, self.hparams.val_samples)

    def test_dataloader(self) -> DataLoader:
        return self._fixed(20_000 + self.hparams.seed, self.hparams.val_samples)

    def predict_dataloader(self) -> DataLoader:
        """The 48 toy prompts (one video each from ``predict``)."""
        return DataLoader(toy_prompts(), batch_size=self.hparams.batch_size, shuffle=False)

    def train_dataloader(self) -> DataLoader:
        ds = ToyVideoDataset(self.hparams.samples_per_epoch, self.hparams.seed, self.world)
        # resumable mid-epoch (same order, same position) and split between ranks
        return resumable_loader(ds, self.trainer, batch_size=self.hparams.batch_size, shuffle=True, drop_last=True,
                                num_workers=self.hparams.num_workers, persistent_workers=self.hparams.num_workers > 0)
