"""Reading a latent cache lazily: the teacher-encoded clips of ``vdistill preprocess`` as training batches.

Construction reads the manifests (their fields checked, :func:`~vdistill.data.latent_cache.check_manifest`) and the
small ``uncond.safetensors`` (hash-checked); ``dataset[i]`` opens the shard holding clip ``i`` (``safe_open``,
memory-mapped, a few kept open) and reads that clip's row of each tensor, so a cache of millions of clips is never
loaded whole. Integrity is :class:`~vdistill.data.trajectories.TrajectoryDataset`'s: each shard's size, header, shapes
and positions are checked whenever it is opened, its sha256 the first time a process opens it (the "verified"
flags live in shared memory: DataLoader workers hash each shard once between them), and every row read is checked
to be finite; a failed check is one line naming the shard file.

A batch carries what consistency distillation would otherwise compute with the teacher's VAE encoder and text
encoder, so a fit on the cache runs neither (:func:`~vdistill.objectives.consistency.encode_videos`).
"""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import torch
from torch import Tensor

from vdistill.backbones.base import Backbone
from vdistill.data.latent_cache import check_shard, corrupt, load_manifest, pad_tail, read_uncond
from vdistill.data.resumable import ResumableLoader, resumable_loader
from vdistill.data.shards import settings_diff
from vdistill.data.trajectories import ShardRows, check_loader_args
from vdistill.errors import UserError


def check_teacher(manifest: dict, teacher: Backbone, root: str | Path = "cache") -> None:
    """Refuse a cache encoded by a teacher with another schedule or latent shape than ``teacher``, in one line.

    The VAE and text encoder themselves are not compared: teachers that share them (Wan2.1 1.3B and 14B) may share
    a cache; the teacher that wrote it is recorded in ``settings.teacher``."""
    s = manifest["settings"]
    mine = {"schedule": teacher.schedule.describe(), "latent_shape": list(teacher.latent_shape(*s["video_size"]))}
    diff = settings_diff({k: s[k] for k in mine}, json.loads(json.dumps(mine)))
    if diff:
        raise UserError(f"the latent cache {str(root)!r} was encoded for a teacher that does not match this one ("
                        f"{s['teacher'].get('class_path', '?') if isinstance(s.get('teacher'), dict) else '?'}): "
                        + "; ".join(d.replace("(folder)", "(cache)").replace("(now)", "(this teacher)") for d in diff))


class LatentClipDataset(ShardRows):
    """Teacher-encoded clips, one item per clip.

    Args:
        root: the cache folder written by :func:`~vdistill.preprocess.writer.preprocess`.
        teacher: when given, the cache must match its schedule and latent shape (:func:`check_teacher`).
        dtype: cast float tensors to this dtype; None keeps the stored one.
        allow_partial: read an unfinished cache (its completed shards) instead of refusing it.
        max_open: shards kept open at once (least recently used are closed).
        verify: compare each shard's sha256 with the manifest the first time it is opened in this process.

    Item ``i``: ``{"latents": [C, T', H', W'], "text": {key: [L, ...]} (zero tails padded back), "prompt": str,
    "index": int (position among the captions file's usable rows), "row": int (data row of the captions file),
    "shard": str (the shard file)}``. ``uncond``: the empty prompt's conditioning ``{key: [1, L, ...]}``.
    """

    noun = "clip"

    def __init__(self, root: str | Path, teacher: Backbone | None = None, dtype: torch.dtype | None = None,
                 allow_partial: bool = False, max_open: int = 8, verify: bool = True) -> None:
        self.root = Path(root)
        self.manifest = load_manifest(self.root)
        if not self.manifest["complete"] and not allow_partial:
            raise UserError(f"the latent cache {str(self.root)!r} is unfinished ({len(self.manifest['shards'])} of "
                            f"{self.manifest['num_shards']} shards{'' if self.manifest['uncond'] else ', no uncond'}"
                            "); rerun the vdistill preprocess command to finish it")
        if teacher is not None:
            check_teacher(self.manifest, teacher, self.root)
        self._init_rows(self.manifest, dtype, max_open, verify)
        self.uncond = {k: self._cast(v) for k, v in read_uncond(self.root, self.manifest).items()}

    def _check(self, path: Path, entry: dict, sha256: bool) -> None:
        check_shard(path, entry, self.settings, sha256=sha256)

    def _prompts(self, handle, path: Path, entry: dict) -> list[str]:
        prompts = json.loads((handle.metadata() or {}).get("prompts", "null"))
        if not isinstance(prompts, list) or len(prompts) != entry["count"]:
            raise corrupt(path, f"its metadata does not list {entry['count']} captions")
        return prompts

    def __getitem__(self, i: int) -> dict:
        k, _, prompt, row = self._row(i)
        bad = [key for key, v in row.items() if v.is_floating_point() and not torch.isfinite(v).all()]
        if bad:
            raise corrupt(self.root / self.shards[k]["file"], f"non-finite {', '.join(bad)} in clip {i % len(self)}")
        text = {key: self._cast(pad_tail(row[f"text.{key}"], spec["shape"][0] if spec["shape"] else 0)[0])
                for key, spec in self.settings["text"].items()}
        return {"latents": self._cast(row["latents"][0]), "text": text, "prompt": prompt,
                "index": int(row["index"]), "row": int(row["row"]), "shard": str(self.root / self.shards[k]["file"])}

class CollateClips:
    """Stack items into a batch: ``latents`` ``[B, C, T', H', W']``, ``text`` ``{key: [B, ...]}``, ``uncond``
    ``{key: [1, ...]}`` (the empty prompt, shared), ``prompts`` ``list[str]``, ``index`` and ``row`` int64 ``[B]``,
    ``shard`` ``list[str]``."""

    def __init__(self, uncond: dict[str, Tensor]) -> None:
        self.uncond = uncond

    def __call__(self, items: list[dict]) -> dict:
        return {
            "latents": torch.stack([it["latents"] for it in items]),
            "text": {k: torch.stack([it["text"][k] for it in items]) for k in items[0]["text"]},
            "uncond": dict(self.uncond),
            "prompts": [it["prompt"] for it in items],
            "index": torch.tensor([it["index"] for it in items], dtype=torch.int64),
            "row": torch.tensor([it["row"] for it in items], dtype=torch.int64),
            "shard": [it["shard"] for it in items],
        }


class LatentClips(L.LightningDataModule):
    """Real clips encoded once by the teacher (``vdistill preprocess``), read lazily from the cache.

    Args:
        root: the cache folder.
        batch_size: clips per batch.
        num_workers: DataLoader workers (each opens its own shards).
        shuffle: shuffle clips each epoch (resumable mid-epoch, split between ranks).
        dtype: ``float32``, ``bfloat16``, ... for float tensors; None keeps the stored dtype.
        verify: hash each shard the first time the training process opens it (see
            :class:`~vdistill.data.trajectories.TrajectoryData`'s ``verify``: one extra read of each shard per epoch 1).

    Training batches (:class:`CollateClips`) carry the clips' latents and text conditioning and the empty prompt's,
    so consistency distillation (which needs ``videos``: real clips, as pixels or as the teacher's latents) runs no
    VAE encoder and no text encoder. Reward critics still decode the student's latents with the VAE decoder.
    """

    provides = ("videos",)

    def __init__(self, root: str, batch_size: int = 1, num_workers: int = 2, shuffle: bool = True,
                 dtype: str | None = None, verify: bool = True) -> None:
        super().__init__()
        check_loader_args(batch_size, num_workers)
        self.save_hyperparameters()
        self.dataset: LatentClipDataset | None = None

    def build(self) -> LatentClipDataset:
        hp = self.hparams
        dtype = None if hp.dtype is None else getattr(torch, hp.dtype, None)
        if hp.dtype is not None and not isinstance(dtype, torch.dtype):
            raise UserError(f"dtype {hp.dtype!r} is not a torch dtype; use e.g. 'float32' or 'bfloat16'")
        self.dataset = LatentClipDataset(hp.root, dtype=dtype, verify=hp.verify)
        return self.dataset

    def check_teacher(self, teacher: Backbone) -> None:
        """Refuse a cache encoded for another teacher (schedule, latent shape); the distillation module calls it."""
        dataset = self.dataset if self.dataset is not None else self.build()
        check_teacher(dataset.manifest, teacher, dataset.root)

    def setup(self, stage: str | None = None) -> None:
        if self.dataset is None:
            self.build()

    def train_dataloader(self) -> ResumableLoader:
        dataset = self.dataset if self.dataset is not None else self.build()
        return resumable_loader(dataset, self.trainer, batch_size=self.hparams.batch_size,
                                shuffle=self.hparams.shuffle, drop_last=True, collate_fn=CollateClips(dataset.uncond),
                                num_workers=self.hparams.num_workers, persistent_workers=self.hparams.num_workers > 0)
