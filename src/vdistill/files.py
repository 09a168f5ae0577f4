"""Atomic outputs and text inputs: a result appears complete under its final name or not at all.

Writers (``vdistill sample``, ``bench``, ``export``, the ``ExportBackbone`` callback) never write into the folder
a user reads. :func:`atomic_folder` hands them a fresh sibling ``<final>.<random>.tmp`` (same parent: same file
system, so the renames below are atomic), fsyncs every file and folder in it, and swaps it into place:

1. ``final`` missing: rename ``tmp -> final``.
2. ``final`` present: rename ``final -> <final>.<random>.old``, rename ``tmp -> final``, delete the ``.old``.

What a ``kill -9`` (or a power cut) leaves, by moment:

* while writing: ``final`` untouched (the previous result, or nothing) and a partial ``.tmp`` beside it;
* between the two renames of step 2: no ``final``, the complete previous result as ``<final>.<random>.old``;
* while deleting the ``.old``: the complete new result under ``final`` and part of the ``.old``.

The next :func:`atomic_folder` for the same ``final`` (or :func:`recover`) repairs this before it writes: a
``.old`` comes back as ``final`` when ``final`` is missing (the killed run never finished, so the previous
result stands) and is deleted otherwise; a ``.tmp`` is deleted. Each writer holds an ``flock`` on its ``.tmp``
(and, during the swap, on the folder it renames aside) until it is done; the kernel drops the lock when the
process dies, so recovery touches only leftovers of dead writers, never the work of a live one. One writer per
``final`` at a time is assumed; a second one started at once fails with an error rather than mixing results.

A failing writer (a full disk, Ctrl-C, an exception) removes its ``.tmp`` and leaves ``final`` as it was. The
swap replaces ``final`` as a whole, so :func:`check_replaceable` refuses a ``final`` that holds anything the
writer does not own (a run folder with checkpoints, the current folder) before any work starts.

:func:`atomic_write` does the same for one file (``<name>.<random>.tmp`` renamed over ``<name>``; the rename
replaces the old file in one step). OS errors come out as one :class:`~vdistill.errors.UserError` naming the
final path (``cannot write 'out/videos.npz': [Errno 28] No space left on device``), also when the library that
failed (numpy's zip writer, Pillow, ffmpeg) gave no file name.
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from fnmatch import fnmatch
from pathlib import Path

from vdistill.errors import UserError

try:
    import fcntl
except ImportError:  # Windows: no flock; recovery then never deletes a leftover it cannot prove stale
    fcntl = None

TMP = ".tmp"
OLD = ".old"


def error_text(err: OSError) -> str:
    """``[Errno 28] No space left on device``: an OSError's reason without its file name."""
    reason = err.strerror or str(err)
    return f"[Errno {err.errno}] {reason}" if err.errno is not None else reason


def cannot_write(path: str | Path, err: OSError) -> UserError:
    return UserError(f"cannot write {str(path)!r}: {error_text(err)}")


@contextmanager
def naming(path: str | Path) -> Iterator[None]:
    """Give an OSError raised inside without a file name (numpy's zip writer, Pillow on a full disk) the name
    ``path``, so that the error says which file could not be written."""
    try:
        yield
    except OSError as err:
        if err.filename is not None:
            raise
        raise OSError(err.errno, err.strerror or str(err), str(path)) from err


def fsync_dir(folder: str | Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some platforms cannot open folders; the rename is still atomic there
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(folder: str | Path) -> None:
    """fsync every file and folder under ``folder``: a rename made durable before its content would survive a
    power cut as a complete-looking folder of empty files."""
    for root, _, files in os.walk(folder):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(root)


def _sibling(final: Path, suffix: str) -> Path:
    return final.with_name(f"{final.name}.{uuid.uuid4().hex[:8]}{suffix}")


def _lock(path: Path, wait: bool) -> int | None:
    """An open descriptor of ``path`` holding an exclusive ``flock``. ``wait=False``: ``None`` when a live process
    holds the lock or the platform cannot lock (nothing is proven stale). ``wait=True``: the descriptor, locked
    where the file system can lock (a missing lock only weakens recovery, it must not stop a write)."""
    fd = os.open(path, os.O_RDONLY)
    if fcntl is None:
        if wait:
            return fd
        os.close(fd)
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        if wait:
            return fd
        os.close(fd)
        return None
    return fd


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def recover(final: str | Path) -> None:
    """Repair what a killed writer of ``final`` left (module docstring): restore a ``.old`` when ``final`` is
    missing, delete the other ``.old`` and ``.tmp`` siblings whose writer is dead."""
    final = Path(os.path.realpath(final))
    if not final.parent.is_dir():
        return
    mine = re.compile(rf"{re.escape(final.name)}\.[0-9a-f]{{8}}({re.escape(TMP)}|{re.escape(OLD)})")
    leftovers = sorted((p for p in final.parent.iterdir() if mine.fullmatch(p.name)),
                       key=lambda p: not p.name.endswith(OLD))  # restore before deleting
    repaired = False
    for path in leftovers:
        try:
            fd = _lock(path, wait=False)
        except OSError:  # vanished meanwhile
            continue
        if fd is None:
            continue
        try:
            if path.name.endswith(OLD) and not os.path.lexists(final):
                os.rename(path, final)
            else:
                _remove(path)
            repaired = True
        finally:
            os.close(fd)
    if repaired:
        fsync_dir(final.parent)


def check_replaceable(folder: str | Path, owned: Iterable[str], what: str = "output folder") -> None:
    """Refuse, in one line, a ``folder`` that an atomic write may not replace: a file, the current folder or one
    above it, or a folder holding entries that match none of the ``owned`` patterns (``fnmatch``, top level)."""
    path = Path(folder)
    if path.exists() and not path.is_dir():
        raise UserError(f"{what} {str(path)!r} is a file, not a folder")
    real = Path(os.path.realpath(path))
    cwd = Path.cwd().resolve()
    if real == cwd or real in cwd.parents:
        raise UserError(f"{what} {str(path)!r} holds the current folder; it is replaced as a whole: give a "
                        "folder below it")
    owned = tuple(owned)
    if real.is_dir():
        foreign = sorted(p.name for p in real.iterdir() if not any(fnmatch(p.name, pat) for pat in owned))
        if foreign:
            raise UserError(f"{what} {str(path)!r} holds {', '.join(map(repr, foreign[:3]))}"
                            f"{' and more' if len(foreign) > 3 else ''}, which vdistill did not write there; it is "
                            f"replaced as a whole: give a new folder or one holding only {', '.join(owned)}")


def _shown(filename: object, tmp: Path, shown: Path) -> str:
    """The path a user knows for ``filename`` inside the temporary folder ``tmp`` of ``shown``."""
    if filename is None:
        return str(shown)
    try:
        return str(shown / Path(os.fsdecode(filename)).relative_to(tmp))
    except (TypeError, ValueError):
        return os.fsdecode(filename) if isinstance(filename, str | bytes) else str(filename)


@contextmanager
def atomic_folder(final: str | Path, owned: Iterable[str]) -> Iterator[Path]:
    """Yield an empty temporary folder; on success swap it in as ``final``, on failure remove it (module
    docstring). ``owned``: the entries a replaceable ``final`` may hold (:func:`check_replaceable`).

    An OSError inside (or in the swap) becomes a :class:`UserError` naming the path under ``final``.
    A symlinked ``final`` keeps its link: the folder it points to is replaced.
    """
    shown = Path(final)
    check_replaceable(shown, owned)
    final = Path(os.path.realpath(shown))
    tmp = None
    try:
        recover(final)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = _sibling(final, TMP)
        tmp.mkdir()
        lock = _lock(tmp, wait=True)
    except OSError as err:
        if tmp is not None:
            _remove(tmp)
        raise cannot_write(_shown(err.filename, final, shown), err) from err
    try:
        try:
            yield tmp
            fsync_tree(tmp)
            _swap(tmp, final)
        except OSError as err:
            raise cannot_write(_shown(err.filename, tmp, shown), err) from err
    except BaseException:
        _remove(tmp)
        raise
    finally:
        os.close(lock)


def _swap(new: Path, final: Path) -> None:
    if not os.path.lexists(final):
        os.rename(new, final)
        fsync_dir(final.parent)
        return
    lock = _lock(final, wait=True)  # the .old stays locked while it exists: recovery leaves a live swap alone
    try:
        old = _sibling(final, OLD)
        os.rename(final, old)
        try:
            os.rename(new, final)
        except BaseException:
            os.rename(old, final)
            raise
        fsync_dir(final.parent)
        _remove(old)  # a failure here only leaves a .old that the next writer deletes
    finally:
        os.close(lock)


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on ``<path>.<random>.tmp`` in the same folder, fsync it, rename it over ``path``; on
    failure remove it and leave ``path`` as it was. An OSError becomes a :class:`UserError` naming ``path``."""
    path = Path(path)
    tmp = _sibling(path, TMP)
    lock = None
    try:
        recover(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.touch(exist_ok=False)
        lock = _lock(tmp, wait=True)
        write(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except OSError as err:
        raise cannot_write(path, err) from err
    finally:
        if lock is not None:
            os.close(lock)
        tmp.unlink(missing_ok=True)  # only there when ``write`` or the rename failed (Ctrl-C included)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def read_text(path: str | Path, what: str, hint: str = "") -> str:
    """The UTF-8 text of ``path`` or one line naming the file: missing, a folder, binary (the first byte that is
    not UTF-8, or a NUL byte). ``what``: ``prompt file``, ``bench file``; ``hint``: appended to the message."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{what} {str(path)!r} is a folder, not a text file{hint}")
    if not path.is_file():
        raise UserError(f"{what} {str(path)!r} does not exist{hint}")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise UserError(f"{what} {str(path)!r} is not UTF-8 text: byte {err.start} is {data[err.start]:#04x}"
                        f"{hint}") from None
    if "\x00" in text:
        raise UserError(f"{what} {str(path)!r} is not a text file: byte {data.index(0)} is NUL{hint}")
    return text
