"""Reading a synthetic trajectory dataset lazily: one memory-mapped shard opened per request, one row read.

Construction reads the manifests only (their fields checked, :func:`~vdistill.data.shards.check_manifest`);
``dataset[i]`` opens the shard holding sample ``i`` (``safe_open``, memory-mapped, a few kept open) and reads that
sample's row of each tensor, so a 110K-sample SynVid (~4 TB) is never loaded whole.

Integrity: every time a shard is opened its size, header, shapes, sample indices and seeds are checked against the
manifest; the FIRST time a shard is opened in a process its sha256 is compared with the manifest's too (``verify``,
on by default; the shards' "verified" flags live in shared memory, so the DataLoader workers of one process hash
each shard once between them (two workers opening the same unverified shard at the same moment both hash it), and
a shard the LRU closed and reopens is not hashed again). Each row read is
checked to be finite (NaN / Inf in the latents or text tensors), a cheap ``isfinite`` per item. A failed check is
a :class:`~vdistill.data.shards.ShardError` naming the shard file (and the sample), one line even from a worker.
"""

from __future__ import annotations

import bisect
import json
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from vdistill.backbones.base import Backbone
from vdistill.data.resumable import resumable_loader
from vdistill.data.shards import check_shard, corrupt, load_manifest, open_shard, settings_diff
from vdistill.errors import UserError


def check_teacher(manifest: dict, teacher: Backbone, root: str | Path = "dataset") -> None:
    """Refuse data made by a teacher with another schedule or latent shape than ``teacher``."""
    s = manifest["settings"]
    mine = {"schedule": teacher.schedule.describe(), "latent_shape": list(teacher.latent_shape(*s["video_size"]))}
    diff = settings_diff({k: s[k] for k in mine}, json.loads(json.dumps(mine)))
    if diff:
        raise UserError(f"trajectories in {str(root)!r} were made by a teacher that does not match this one: "
                        + "; ".join(d.replace("(now)", "(this teacher)") for d in diff))


def select_keys(stored: Sequence[int], wanted: Sequence[int] | None, root: str | Path = "dataset") -> tuple[int, ...]:
    """Positions in the stored key points of the step indices ``wanted`` (None: all), checked."""
    if wanted is None:
        return tuple(range(len(stored)))
    wanted = [int(i) for i in wanted]
    missing = [i for i in wanted if i not in stored]
    if missing:
        raise UserError(f"key_indices {wanted}: {missing} not stored in {str(root)!r}; choose from {list(stored)}")
    if len(wanted) < 2 or wanted != sorted(set(wanted)):
        raise UserError(f"key_indices {wanted}: give at least two distinct step indices in increasing order "
                        f"(from {list(stored)})")
    return tuple(stored.index(i) for i in wanted)


SAME_TEACHER_RUN = ("teacher", "schedule", "latent_shape", "video_size", "steps", "cfg", "guidance")


def check_held_out(train: TrajectoryDataset, val: TrajectoryDataset) -> list[str]:
    """Refuse a held-out set whose trajectories are not comparable with ``train``'s (another teacher, solver, CFG,
    latent shape or key timesteps); return warnings (empty when none): noise seeds shared with ``train`` (prompt
    ``i`` of a set uses seed ``seed + i``, so shared seeds can mean the very same trajectories)."""
    a, b = train.settings, val.settings
    diff = settings_diff({k: a.get(k) for k in SAME_TEACHER_RUN}, {k: b.get(k) for k in SAME_TEACHER_RUN})
    if diff:
        raise UserError(f"the held-out trajectories in {str(val.root)!r} were not made like the training ones in "
                        f"{str(train.root)!r}: " + "; ".join(d.replace("(now)", "(held-out)") for d in diff))
    if not torch.equal(train.timesteps, val.timesteps):
        raise UserError(f"the held-out set {str(val.root)!r} has key timesteps {val.timesteps.tolist()}, the "
                        f"training set {train.timesteps.tolist()}")
    (lo_a, hi_a), (lo_b, hi_b) = ((s["seed"], s["seed"] + s["num_prompts"]) for s in (a, b))
    if max(lo_a, lo_b) < min(hi_a, hi_b):
        return [f"the held-out set {str(val.root)!r} uses noise seeds {lo_b}..{hi_b - 1} and the training set "
                f"{lo_a}..{hi_a - 1}: a shared seed with the same prompt is the same trajectory, so its loss is not "
                "held out (synthesise it with --seed past the training set's last seed)"]
    return []


class ShardRows(Dataset, ABC):
    """Rows of the safetensors shards a manifest lists, read lazily: one memory-mapped shard opened per request (the
    ``max_open`` least recently used kept open), each shard checked against its manifest entry when first opened and
    its sha256 compared once per training process (``verify``; the flags live in shared memory, so DataLoader workers
    hash a shard once between them). Shared by :class:`TrajectoryDataset` and the latent cache's dataset; a subclass
    gives :meth:`_check` (its format's shard check) and :meth:`_prompts` (the shard's prompts from its metadata)."""

    noun = "sample"

    def _init_rows(self, manifest: dict, dtype: torch.dtype | None, max_open: int, verify: bool) -> None:
        self.settings = manifest["settings"]
        self.shards = manifest["shards"]
        self.offsets = [0]
        for e in self.shards:
            self.offsets.append(self.offsets[-1] + e["count"])
        self.dtype = dtype
        self.max_open = max_open
        self._open: OrderedDict[int, tuple[object, list[str]]] = OrderedDict()
        # 1 = hashed in this process; shared memory survives the fork or spawn pickling of DataLoader workers
        self._verified = torch.zeros(len(self.shards), dtype=torch.uint8).share_memory_() if verify else None

    @abstractmethod
    def _check(self, path: Path, entry: dict, sha256: bool) -> None:
        """Refuse a shard whose file does not match its manifest entry (its sha256 too when ``sha256``)."""

    @abstractmethod
    def _prompts(self, handle, path: Path, entry: dict) -> list[str]:
        """The prompts of an open shard's rows."""

    def __len__(self) -> int:
        return self.offsets[-1]

    def __getstate__(self) -> dict:  # DataLoader workers open their own handles
        return {**self.__dict__, "_open": OrderedDict()}

    def _shard(self, k: int) -> tuple[object, list[str]]:
        if k in self._open:
            self._open.move_to_end(k)
            return self._open[k]
        entry = self.shards[k]
        path = self.root / entry["file"]
        hash_it = self._verified is not None and not self._verified[k]
        self._check(path, entry, hash_it)
        if hash_it:
            self._verified[k] = 1
        handle = open_shard(path)
        prompts = self._prompts(handle, path, entry)
        self._open[k] = (handle, prompts)
        if len(self._open) > self.max_open:
            self._open.popitem(last=False)
        return handle, prompts

    def _cast(self, x: Tensor) -> Tensor:
        return x.to(self.dtype) if self.dtype is not None and x.is_floating_point() else x

    def _row(self, i: int) -> tuple[int, int, str, dict[str, Tensor]]:
        """``(shard index, row in it, its prompt, {tensor name: [1, ...]})`` of item ``i``."""
        if not -len(self) <= i < len(self):
            raise IndexError(f"{self.noun} {i} is out of range for {len(self)} {self.noun}s")
        i %= len(self)
        k = bisect.bisect_right(self.offsets, i) - 1
        handle, prompts = self._shard(k)
        j = i - self.offsets[k]
        return k, j, prompts[j], {key: handle.get_slice(key)[j: j + 1] for key in handle.keys()}


class TrajectoryDataset(ShardRows):
    """Key points of teacher trajectories, one item per prompt.

    Args:
        root: dataset folder written by :func:`~vdistill.synth.writer.synthesize`.
        teacher: when given, the manifest must match its schedule and latent shape.
        dtype: cast float tensors to this dtype (e.g. ``torch.float32``); None keeps the stored one (bf16).
        allow_partial: read an unfinished dataset (only its completed shards) instead of refusing it.
        max_open: shards kept open at once (least recently used are closed).
        key_indices: train on a subset of the stored key points, as teacher step indices (e.g. ``[0, 50]`` from
            a ``0, 25, 50`` dataset: a 1-step student from the 2-step set); None: all of them.
        verify: compare each shard's sha256 with the manifest the first time it is opened in this process (its
            DataLoader workers share the record): one extra sequential read of every shard the process reads.

    Item ``i``: ``{"latents": [K, C, T, H, W], "text": {key: [...]}, "timesteps": [K] (float32 schedule times,
    noisiest first), "prompt": str, "seed": int, "index": int, "shard": str (the shard file's path)}``.
    """

    def __init__(self, root: str | Path, teacher: Backbone | None = None, dtype: torch.dtype | None = None,
                 allow_partial: bool = False, max_open: int = 8, key_indices: Sequence[int] | None = None,
                 verify: bool = True) -> None:
        self.root = Path(root)
        self.manifest = load_manifest(self.root)
        if not self.manifest["complete"] and not allow_partial:
            raise UserError(f"{str(self.root)!r} is unfinished ({len(self.manifest['shards'])} of "
                            f"{self.manifest['num_shards']} shards); rerun the synthesis command to finish it "
                            "(or pass allow_partial=True)")
        if teacher is not None:
            check_teacher(self.manifest, teacher, self.root)
        self._init_rows(self.manifest, dtype, max_open, verify)
        self.keys = select_keys(self.settings["key_indices"], key_indices, self.root)
        self.all_keys = len(self.keys) == len(self.settings["key_indices"])
        self.timesteps = torch.tensor([self.settings["key_timesteps"][k] for k in self.keys], dtype=torch.float32)

    def _check(self, path: Path, entry: dict, sha256: bool) -> None:
        check_shard(path, entry, self.settings, sha256=sha256)

    def _prompts(self, handle, path: Path, entry: dict) -> list[str]:
        return json.loads(handle.metadata()["prompts"])

    def __getitem__(self, i: int) -> dict:
        k, _, prompt, row = self._row(i)
        row = {key: v[0] for key, v in row.items()}
        self._check_finite(row, k)
        return {
            "latents": self._cast(row["latents"] if self.all_keys else row["latents"][list(self.keys)]),
            "text": {key[5:]: self._cast(v) for key, v in row.items() if key.startswith("text.")},
            "timesteps": self.timesteps.clone(),
            "prompt": prompt,
            "seed": int(row["seeds"]),
            "index": int(row["index"]),
            "shard": str(self.root / self.shards[k]["file"]),
        }

    def _check_finite(self, row: dict[str, Tensor], k: int) -> None:
        """Refuse a row with NaN / Inf in its latents or float text tensors (a cheap check of the stored row)."""
        bad = [key for key, v in row.items() if v.is_floating_point() and not torch.isfinite(v).all()]
        if bad:
            what = "latents" if "latents" in bad else f"text tensors {[key[5:] for key in bad]}"
            raise corrupt(self.root / self.shards[k]["file"], f"non-finite {what} in sample {int(row['index'])}")


def collate(items: list[dict]) -> dict:
    """Stack items: ``latents`` ``[B, K, C, T, H, W]``, ``text`` ``{key: [B, ...]}``, ``timesteps`` ``[B, K]``,
    ``prompt`` ``list[str]``, ``seed`` and ``index`` int64 ``[B]``; ``shard`` ``list[str]`` when the items have
    one (:class:`TrajectoryDataset`'s do; items made by hand may not)."""
    batch = {
        "latents": torch.stack([it["latents"] for it in items]),
        "text": {k: torch.stack([it["text"][k] for it in items]) for k in items[0]["text"]},
        "timesteps": torch.stack([it["timesteps"] for it in items]),
        "prompt": [it["prompt"] for it in items],
        "seed": torch.tensor([it["seed"] for it in items], dtype=torch.int64),
        "index": torch.tensor([it["index"] for it in items], dtype=torch.int64),
    }
    if all("shard" in it for it in items):
        batch["shard"] = [it["shard"] for it in items]
    return batch


def check_loader_args(batch_size: int, num_workers: int, val_batch_size: int | None = None) -> None:
    """Refuse a batch size below 1 or a negative worker count, naming the argument."""
    for name, value, least in (("batch_size", batch_size, 1), ("val_batch_size", val_batch_size, 1),
                               ("num_workers", num_workers, 0)):
        if value is not None and value < least:
            raise UserError(f"data {name} is {value}; it must be at least {least}")


class TrajectoryData(L.LightningDataModule):
    """Batches of synthetic trajectories (:func:`collate` form) for trajectory / adversarial distillation.

    Args:
        root: dataset folder written by ``synthesize``.
        batch_size: samples per batch.
        num_workers: DataLoader workers (each opens its own shards).
        shuffle: shuffle samples each epoch.
        dtype: ``float32``, ``bfloat16``, ... for float tensors; None keeps the stored dtype.
        key_indices: the key points to train on, as teacher step indices (a subset of the stored ones, e.g.
            ``[0, 50]`` for a 1-step student from a ``0, 25, 50`` set); None: all stored ones.
        val_root: a held-out set of the same teacher (``vdistill synth`` with other seeds): the student's trajectory
            loss on it is logged as ``val/trajectory`` and ``val/k{i}`` at every validation (Lightning's
            ``trainer.val_check_interval`` / ``check_val_every_n_epoch``). A training loss far below it means
            the student is memorising its set. None: no validation.
        val_batch_size: batch of the held-out set (None: ``batch_size``).
        verify: compare each shard's sha256 with its manifest the first time the shard is opened in the training
            process (once per shard per process, shared by its DataLoader workers; each DDP rank hashes the shards
            it reads). Costs one extra read and hash of each shard in the first epoch: about 0.7 s per GB on a core
            hashing 1.5 GB/s (``experiments/bench/verify_cost.py``: a 302 MB toy set 0.44 s an epoch instead of
            0.27 s, from the page cache). Off skips only the hash: the size, header and finiteness checks stay;
            ``vdistill synth --verify`` checks a whole set once.

    Training batches are teacher key points: what trajectory guidance and adversarial alignment need
    (``provides``).
    """

    provides = ("trajectory",)

    def __init__(self, root: str, batch_size: int = 8, num_workers: int = 0, shuffle: bool = True,
                 dtype: str | None = None, key_indices: list[int] | None = None, val_root: str | None = None,
                 val_batch_size: int | None = None, verify: bool = True) -> None:
        super().__init__()
        check_loader_args(batch_size, num_workers, val_batch_size)
        self.save_hyperparameters()
        self.dataset: TrajectoryDataset | None = None
        self.val_dataset: TrajectoryDataset | None = None
        if val_root is None:  # no validation loop (Lightning's is_overridden reads None as "not defined"; an empty
            self.val_dataloader = None  # loader instead makes it warn at every fit)

    def build(self, teacher: Backbone | None = None) -> TrajectoryDataset:
        """Open the dataset and the held-out one (checked against ``teacher`` when given, and against each other);
        ``setup`` calls it without a teacher."""
        hp = self.hparams
        dtype = None if hp.dtype is None else getattr(torch, hp.dtype, None)
        if hp.dtype is not None and not isinstance(dtype, torch.dtype):
            raise UserError(f"dtype {hp.dtype!r} is not a torch dtype; use e.g. 'float32' or 'bfloat16'")
        self.dataset = TrajectoryDataset(hp.root, teacher, dtype=dtype, key_indices=hp.key_indices,
                                         verify=hp.verify)
        if hp.val_root is not None:
            self.val_dataset = TrajectoryDataset(hp.val_root, teacher, dtype=dtype, key_indices=hp.key_indices,
                                                 verify=hp.verify)
            for warning in check_held_out(self.dataset, self.val_dataset):
                rank_zero_warn(warning)
        return self.dataset

    def setup(self, stage: str | None = None) -> None:
        if self.dataset is None:
            self.build()

    def train_dataloader(self) -> DataLoader:
        # resumable mid-epoch (same order, same position) and split between ranks
        return resumable_loader(self.dataset or self.build(), self.trainer, batch_size=self.hparams.batch_size,
                                shuffle=self.hparams.shuffle, drop_last=True, collate_fn=collate,
                                num_workers=self.hparams.num_workers, persistent_workers=self.hparams.num_workers > 0)

    def val_dataloader(self) -> DataLoader:
        if self.val_dataset is None:
            self.build()
        return DataLoader(self.val_dataset, batch_size=self.hparams.val_batch_size or self.hparams.batch_size,
                          shuffle=False, collate_fn=collate, num_workers=self.hparams.num_workers)
