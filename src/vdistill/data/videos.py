"""Real video clips with captions (the dataset and loader of :class:`~vdistill.data.video_clips.VideoClips`), as
WebVid / OpenVid users have them: a CSV, TSV or JSONL file with
a video path and a caption per row, and the videos (mp4, mov, webm, mkv, gif) under ``video_root``.

Each training item is a clip decoded in a DataLoader worker (:func:`~vdistill.data.decode.read_clip`, PyAV; the
module docstring there says why PyAV): ``num_frames`` frames at ``fps`` (or every ``stride``-th frame) from a
random start seeded by ``(seed, epoch, index)``, resized and centre-cropped to ``height x width``. Batches are
ToyVideos' ``[videos [B, T, 3, H, W] float32 in [0, 1], prompts (a tuple of B str)]`` (torch's default collate):
the real clips that consistency distillation encodes with the teacher's VAE.

Bad rows never stop an epoch. A row with an empty caption, no path, a URL, an unsupported extension or a path
outside ``video_root`` (``../`` or an absolute path elsewhere) is dropped when the captions file is read (one
warning). A file that is missing, cannot be decoded or is too short for the clip is found by the worker that reads
it: the item takes the next readable row instead (row order, wrapping round), so an epoch's batches depend only on
the files and the seeds, never on worker timing, and a resumed run gets the batches the interrupted one would have
had. The bad rows are marked in a table in shared memory (every worker skips a row another one found bad) and the
loader logs ``skipped N of M clips of 'captions.csv': a.mp4 (too short), b.webm (unreadable), ...`` when the first
bad file is found, each time their count doubles, and at the end of every epoch.

Column names (``path_column`` / ``caption_column``, or ``path_format`` to build the path from several columns):
OpenVid-1M's CSV has ``video`` and ``caption``; WebVid's ``results_*.csv`` has ``videoid``, ``contentUrl`` (a URL),
``page_dir`` and ``name`` (the caption), with the videos commonly stored as ``{page_dir}/{videoid}.mp4``
(VideoCrafter's WebVid loader).
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import logging
import os
import string
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from vdistill.data.decode import FORMATS, ClipError, ClipSpec, read_clip
from vdistill.data.resumable import ResumableLoader, ResumableSampler
from vdistill.errors import UserError

log = logging.getLogger(__name__)

#: why a row was skipped, by its code in the shared table (0: not skipped)
REASONS = ("", "missing", "unreadable", "too short", "empty caption", "no path", "a URL", "unsupported format",
           "outside video_root", "not a JSON object")
SUFFIXES = {".csv": ",", ".tsv": "\t", ".jsonl": None, ".ndjson": None}


class VideoDataError(UserError):
    """A dataset with no readable clip, in one line even when a DataLoader worker raised it (torch re-raises a
    worker's exception as ``type(err)("Caught ... in DataLoader worker ...\\n<traceback>")``)."""

    def __init__(self, message: str) -> None:
        if message.startswith(f"Caught {type(self).__name__} in DataLoader worker"):
            message = message.rstrip().splitlines()[-1].split(": ", 1)[-1]
        super().__init__(message)


class Strings:
    """Many strings packed in one numpy buffer: DataLoader workers share its pages, where a Python list's reference
    counts would make every forked worker copy them (WebVid-10M's captions and paths: over 1 GB as a list)."""

    def __init__(self, items: list[str]) -> None:
        encoded = [s.encode("utf-8") for s in items]
        self.offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(b) for b in encoded], out=self.offsets[1:])
        self.data = np.frombuffer(b"".join(encoded), dtype=np.uint8)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> str:
        return self.data[self.offsets[i]: self.offsets[i + 1]].tobytes().decode("utf-8")


def format_fields(path_format: str) -> list[str]:
    """The column names ``path_format`` uses (``{page_dir}/{videoid}.mp4``); only plain names are allowed."""
    fields = [f for _, f, _, _ in string.Formatter().parse(path_format) if f is not None]
    bad = [f for f in fields if not f or any(c in f for c in ".[]!:")]
    if bad or not fields:
        raise UserError(f"path_format {path_format!r} must name columns as {{column}} (e.g. "
                        f"'{{page_dir}}/{{videoid}}.mp4'), got {bad or 'no column'}")
    return fields


def check_captions_file(path: Path) -> None:
    """Refuse, in one line, a captions file that is missing, a folder or not named ``.csv`` / ``.tsv`` / ``.jsonl``."""
    if path.suffix.lower() not in SUFFIXES:
        raise UserError(f"captions file {str(path)!r}: give a {', '.join(SUFFIXES)} file")
    if path.is_dir():
        raise UserError(f"captions file {str(path)!r} is a folder, not a CSV / TSV / JSONL file")
    if not path.is_file():
        raise UserError(f"captions file {str(path)!r} does not exist")


def open_text(path: Path) -> io.TextIOWrapper:
    """``path`` opened as UTF-8 text, or one line: missing, a folder, empty, binary (a NUL byte in its first 64
    KiB; :func:`read_rows` finds those further on, and bytes that are not UTF-8)."""
    check_captions_file(path)
    with open(path, "rb") as f:
        head = f.read(65536)
    if not head.strip():
        raise UserError(f"captions file {str(path)!r} is empty")
    if b"\x00" in head:
        raise UserError(f"captions file {str(path)!r} is not a text file: byte {head.index(0)} is NUL")
    return open(path, encoding="utf-8-sig", newline="")  # -sig: the byte-order mark spreadsheets write


def csv_rows(f: io.TextIOWrapper, sep: str) -> tuple[list[str], Iterator[tuple[int, dict | None]]]:
    """The header's columns and the ``(line number, row)`` of a CSV / TSV file."""
    reader = csv.DictReader(f, delimiter=sep)
    return list(reader.fieldnames or []), ((reader.line_num, row) for row in reader)


def jsonl_rows(f: io.TextIOWrapper, path: Path) -> tuple[list[str], Iterator[tuple[int, dict | None]]]:
    """The first object's keys and the ``(line number, object or None)`` of a JSONL file (None: a line that is not
    a JSON object, which counts as a bad row; the first line must be one)."""
    rows = ((n, _json_object(line)) for n, line in enumerate(f, 1) if line.strip())
    first = next(rows)
    if first[1] is None:
        raise UserError(f"captions file {str(path)!r}: line {first[0]} is not a JSON object")
    return list(first[1]), itertools.chain([first], rows)


def _json_object(line: str) -> dict | None:
    try:
        row = json.loads(line)
    except json.JSONDecodeError:
        return None
    return row if isinstance(row, dict) else None


def read_rows(path: Path, columns: list[str]) -> Iterator[tuple[int, dict | None]]:
    """``(line number, row)`` of a CSV / TSV (header line first) or JSONL file; a row is None for a JSONL line that
    is not an object. Refuses, in one line, a file that is not text or lacks one of ``columns``."""
    sep = SUFFIXES[path.suffix.lower()]
    with open_text(path) as f:
        try:
            found, rows = csv_rows(f, sep) if sep is not None else jsonl_rows(f, path)
            missing = [c for c in columns if c not in found]
            if missing:
                raise UserError(f"captions file {str(path)!r} has no column {missing[0]!r} (columns: "
                                f"{', '.join(map(str, found))}); set path_column / caption_column / path_format "
                                "(OpenVid-1M: video, caption; WebVid: path_format '{page_dir}/{videoid}.mp4', "
                                "caption_column name)")
            for line, row in rows:
                if row is not None and any(isinstance(v, str) and "\x00" in v for v in row.values()):
                    raise UserError(f"captions file {str(path)!r} is not a text file: line {line} has a NUL byte")
                yield line, row
        except UnicodeDecodeError as err:
            raise UserError(f"captions file {str(path)!r} is not UTF-8 text ({err.reason})") from None
        except csv.Error as err:
            raise UserError(f"captions file {str(path)!r}: {err}") from None


def row_reason(name: str, caption: str, root: str | None) -> int:
    """The code (:data:`REASONS`) of a row the captions file alone shows is bad, else 0."""
    if not caption.strip():
        return REASONS.index("empty caption")
    if not name.strip():
        return REASONS.index("no path")
    if "://" in name:
        return REASONS.index("a URL")
    if os.path.splitext(name)[1].lower() not in FORMATS:
        return REASONS.index("unsupported format")
    if root is not None:
        full = os.path.normpath(os.path.join(root, name))  # lexical: a symlink the user put under the root is fine
        if not full.startswith(os.path.join(root, "")):
            return REASONS.index("outside video_root")
    return 0


def parse_row(row: dict | None, fields: list[str], caption_column: str, path_format: str | None,
              root: str | None) -> tuple[str, str, int]:
    """``(path as written, caption, code)`` of a row (code 0: usable so far; else its :data:`REASONS` index)."""
    if row is None:
        return "", "", REASONS.index("not a JSON object")
    values = {f: str(row.get(f) or "").strip() for f in fields}
    caption = str(row.get(caption_column) or "").strip()
    if not all(values.values()):  # a template over an empty column would make another path ("/123.mp4")
        name = ""
    else:
        name = path_format.format_map(values) if path_format is not None else values[fields[0]]
    return name, caption, row_reason(name, caption, root)


class VideoClipDataset(Dataset):
    """Clips of the rows of a captions file. Item ``(epoch, i)`` (or ``i``: epoch 0): ``(video [T, 3, H, W] float32
    in [0, 1], caption)`` of the ``i``-th usable row, or of the next readable one (module docstring).

    Args:
        captions: the CSV / TSV / JSONL file.
        video_root: the folder relative paths start from (None: the captions file's folder); paths must stay
            inside it when it is given.
        spec: the clip's frames and size.
        path_column, caption_column, path_format: where the path and the caption are (``path_format``: a
            ``str.format`` template over the columns, which replaces ``path_column``).
        seed, random_start: the start frame is drawn from ``(seed, epoch, i)``; ``random_start=False`` takes
            every clip from its first frame.
    """

    def __init__(self, captions: str | Path, video_root: str | Path | None, spec: ClipSpec,
                 path_column: str = "path", caption_column: str = "caption", path_format: str | None = None,
                 seed: int = 0, random_start: bool = True) -> None:
        self.captions_file = Path(captions)
        root = os.path.abspath(video_root) if video_root is not None else None
        self.root = root if root is not None else os.path.dirname(os.path.abspath(captions))
        self.spec, self.seed, self.random_start = spec, seed, random_start
        fields = format_fields(path_format) if path_format is not None else [path_column]
        names, texts, status = [], [], []
        for line, row in read_rows(self.captions_file, [*fields, caption_column]):
            name, caption, code = parse_row(row, fields, caption_column, path_format, root)
            names.append(name if name.strip() else f"line {line}")
            texts.append(caption)
            status.append(code)
        if not names:
            raise UserError(f"captions file {str(captions)!r} has no rows")
        self.names, self.texts = Strings(names), Strings(texts)
        status = np.asarray(status, dtype=np.uint8)
        self.rows = np.flatnonzero(status == 0)
        # shared memory: the marks a DataLoader worker makes reach the main process and the other workers
        self.status = torch.from_numpy(status).share_memory_()
        #: files found bad by decoding, counted as they are found (a cheap trigger for the loader's reports; two
        #: workers counting at the same moment may count one too few or the same file twice)
        self.found = torch.zeros(1, dtype=torch.int64).share_memory_()

    def __len__(self) -> int:
        return len(self.rows)

    def path(self, row: int) -> str:
        return os.path.join(self.root, self.names[row])

    def __getitem__(self, key: tuple[int, int] | int) -> tuple[torch.Tensor, str]:
        epoch, i = key if isinstance(key, tuple) else (0, key)
        for step in range(len(self.rows)):
            row = int(self.rows[(i + step) % len(self.rows)])
            if self.status[row]:  # found bad before (here or by another worker): it would fail again
                continue
            rng = np.random.default_rng([self.seed, epoch, i, step]) if self.random_start else None
            try:
                frames = read_clip(self.path(row), self.spec, rng)
            except ClipError as err:
                log.debug("skipping %s: %s", self.names[row], err)  # FFmpeg's reason, for a DEBUG log
                self.status[row] = REASONS.index(err.reason)
                self.found += 1
                continue
            video = torch.from_numpy(frames).permute(0, 3, 1, 2).float().div_(255)
            return video.contiguous(), self.texts[row]
        raise VideoDataError(f"no clip of captions file {str(self.captions_file)!r} could be read: {self.report()}")

    def skipped(self) -> int:
        """Rows skipped so far: dropped when the captions file was read, or found bad by decoding."""
        return int(torch.count_nonzero(self.status))

    def report(self, limit: int = 5) -> str:
        """``skipped N of M clips of 'captions.csv': a.mp4 (too short), ...`` (the first ``limit`` in row order)."""
        bad = torch.nonzero(self.status).flatten().tolist()
        names = [f"{self.names[r]} ({REASONS[int(self.status[r])]})" for r in bad[:limit]]
        more = ", ..." if len(bad) > limit else ""
        return (f"skipped {len(bad)} of {len(self.status)} clips of {str(self.captions_file)!r}: "
                f"{', '.join(names)}{more}")


class EpochSampler(ResumableSampler):
    """A :class:`ResumableSampler` whose items are ``(epoch, index)``: the epoch seeds each clip's start frame, so
    every epoch takes other windows of the videos and a resumed epoch takes the same ones."""

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = int(self.epoch)
        return ((epoch, i) for i in super().__iter__())


class VideoLoader(ResumableLoader):
    """A :class:`ResumableLoader` that logs the skipped clips (:meth:`VideoClipDataset.report`) when the first bad
    file is found and each time their count has doubled since the last report, and at the end of every epoch that
    skipped any."""

    dataset: VideoClipDataset

    def __iter__(self) -> Iterator[Any]:
        where = f" (rank {self.sampler.rank})" if self.sampler.num_replicas > 1 else ""
        reported = int(self.dataset.found)
        for batch in super().__iter__():
            yield batch
            found = int(self.dataset.found)  # one shared number: no scan of a 10M-row table per batch
            if found > reported and found >= 2 * reported:
                log.warning("%s%s", self.dataset.report(), where)
                reported = found
        if self.dataset.skipped():
            log.warning("epoch %d: %s%s", self.sampler.epoch, self.dataset.report(), where)


def video_loader(dataset: VideoClipDataset, trainer: Any = None, *, batch_size: int, num_workers: int = 0
                 ) -> VideoLoader:
    """The training loader of ``dataset`` for ``trainer``'s rank: :func:`~vdistill.data.resumable.resumable_loader`
    (same ranks, same seed, full batches) with an :class:`EpochSampler`."""
    ranks = (getattr(trainer, "distributed_sampler_kwargs", None) if trainer is not None else None) or {}
    sampler = EpochSampler(dataset, num_replicas=ranks.get("num_replicas", 1), rank=ranks.get("rank", 0),
                           shuffle=True, seed=int(os.getenv("PL_GLOBAL_SEED", 0)))
    return VideoLoader(dataset, sampler, batch_size=batch_size, drop_last=len(sampler) >= batch_size,
                       num_workers=num_workers, persistent_workers=num_workers > 0)
