"""Training dataloaders that resume mid-epoch exactly: a seeded, rank-aware order and a position that checkpoints
keep.

Lightning saves the ``state_dict`` of every training dataloader that has one and hands it back on resume; a plain
``DataLoader`` has none, so a run resumed mid-epoch would start the epoch over in a new order (Lightning's "not
resumable" warning). Here epoch ``e``'s order is a permutation seeded by ``(seed, e)``, not by the global RNG of
the moment the epoch began, and the loader records how many batches of the epoch it has handed out: a resumed run
draws the same permutation and skips those batches' indices without loading them.

The sampler is a :class:`~torch.utils.data.DistributedSampler` built from the trainer's ranks (Lightning leaves a
``DistributedSampler`` as it is instead of injecting its own), so DDP / FSDP / DeepSpeed ranks read disjoint
slices; one process is ``num_replicas=1``. Batches are counted as they are handed out: Lightning does not prefetch
from loaders that have a length, so at a checkpoint that count is exactly the batches trained on.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler


class ResumableSampler(DistributedSampler):
    """A ``DistributedSampler`` (order seeded by ``seed + epoch``) that can skip the start of its next pass."""

    def __init__(self, dataset: Dataset, num_replicas: int = 1, rank: int = 0, shuffle: bool = True,
                 seed: int = 0) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed)
        self.skip = 0

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        skip, self.skip = self.skip, 0
        return iter(indices[skip:])


class ResumableLoader(DataLoader):
    """A ``DataLoader`` over a :class:`ResumableSampler` whose ``state_dict`` is its place in the epoch."""

    sampler: ResumableSampler

    def __init__(self, dataset: Dataset, sampler: ResumableSampler, **kwargs: Any) -> None:
        # its own generator: a DataLoader draws its workers' base seed when an iterator starts, from the GLOBAL RNG
        # when it has none, and a resumed run starts an iterator mid-epoch where the interrupted one did not
        super().__init__(dataset, sampler=sampler, generator=torch.Generator(), **kwargs)
        self.served = 0

    def __iter__(self) -> Iterator[Any]:
        self.served = self.sampler.skip // self.batch_size
        self.generator.manual_seed(self.sampler.seed + self.sampler.epoch)
        for batch in super().__iter__():
            self.served += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": int(self.sampler.epoch), "batches": self.served}

    def load_state_dict(self, state: dict[str, int]) -> None:
        epoch, batches = int(state["epoch"]), int(state["batches"])
        if batches >= len(self):  # saved at the end of an epoch: the next one starts at its beginning
            epoch, batches = epoch + 1, 0
        self.sampler.set_epoch(epoch)
        self.sampler.skip = batches * self.batch_size


def resumable_loader(dataset: Dataset, trainer: Any = None, *, batch_size: int, shuffle: bool = True,
                     drop_last: bool = False, **kwargs: Any) -> ResumableLoader:
    """The training loader of ``dataset`` for ``trainer``'s rank (None or one process: all of it), its order
    seeded by the run's seed (``seed_everything``'s ``PL_GLOBAL_SEED``, as Lightning's own distributed sampler).

    ``drop_last`` drops a last incomplete batch (only when the rank has at least one full batch).
    """
    ranks = (getattr(trainer, "distributed_sampler_kwargs", None) if trainer is not None else None) or {}
    sampler = ResumableSampler(dataset, num_replicas=ranks.get("num_replicas", 1), rank=ranks.get("rank", 0),
                               shuffle=shuffle, seed=int(os.getenv("PL_GLOBAL_SEED", 0)))
    drop_last = drop_last and len(sampler) >= batch_size
    return ResumableLoader(dataset, sampler, batch_size=batch_size, drop_last=drop_last, **kwargs)
