"""Atomic writes: a reader sees a file or a directory whole, the old one or the new one.

Every writer in the package goes through here (checkpoints, adapters, corpora and text
tasks, the model-conversion cache, the synthetic corpus's per-utterance files):

- :func:`write_file` writes into a temporary sibling ``.<name>.tmp-<pid>-<random>`` and
  renames it onto ``path``. ``os.replace`` within one file system is atomic, and a sibling
  is on the same file system.
- :func:`replace_dir` does the same for a directory. A directory cannot be renamed onto a
  non-empty one, so the swap takes two renames: ``<name>`` -> ``<name>.old``, then the
  temporary directory -> ``<name>``; ``<name>.old`` is removed only once the new one is in
  place. A kill between the two renames leaves ``<name>.old`` alone, and
  :func:`existing_dir` hands it to readers.
- :func:`create_dir` makes a directory that never changes once made (a cache entry): it is
  renamed into place unless another writer made it first, whose result is then kept.

Readers in other processes that open what :func:`replace_dir` swaps (a corpus that one
process adds signal columns to while another trains on it) take :func:`dir_lock` shared
while they open it; ``replace_dir(..., lock=...)`` holds it exclusive around the two
renames only, so a reader never opens a directory between them or half in the old copy
and half in the new one.

Temporary directories of killed processes are removed by the next write of the same
target (those of a process still running are left alone). The promise is about killed
processes, not power loss: nothing is fsync'ed.

Each step that changes what a reader can see is a call of :func:`_rename` or
:func:`_remove`, so a test can interrupt a writer before any one step
(``tests/test_atomic.py``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

try:  # POSIX advisory locks; where there are none, dir_lock takes no lock
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]

TMP_INFIX = ".tmp-"
OLD_SUFFIX = ".old"
LOCK_NAME = ".swap.lock"


def _rename(src: Path, dst: Path) -> None:
    """Rename ``src`` onto ``dst`` (a file replaces a file; a directory only an empty one)."""
    os.replace(src, dst)


def _remove(path: Path) -> None:
    """Remove a file or a directory tree, if it exists."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def tmp_sibling(target: Path) -> Path:
    """A fresh temporary name beside ``target``: ``.<name>.tmp-<pid>-<random>`` (hidden, and
    the pid tells :func:`remove_stale_tmp` whether its writer still runs)."""
    return target.parent / f".{target.name}{TMP_INFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}"


def old_path(target: Path) -> Path:
    """``<name>.old``: where :func:`replace_dir` keeps the previous directory during a swap."""
    return target.with_name(target.name + OLD_SUFFIX)


def write_file(path: str | Path, write: Callable[[Path], object]) -> Path:
    """Call ``write(tmp)`` to write a temporary sibling, then rename it onto ``path``.

    ``write`` gets the temporary path (which does not exist yet) and must create a file
    there. On an exception the temporary file is removed and ``path`` is untouched.

    Returns:
        ``path``.
    """
    path = Path(path)
    tmp = tmp_sibling(path)
    try:
        write(tmp)
        _rename(tmp, path)
    except BaseException:
        _remove(tmp)
        raise
    return path


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns ``path``."""
    return write_file(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


@contextlib.contextmanager
def _tmp_dir(target: Path) -> Iterator[Path]:
    """A fresh temporary directory beside ``target``, removed if the block raises."""
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_tmp(target)
    tmp = tmp_sibling(target)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        _remove(tmp)
        raise


@contextlib.contextmanager
def replace_dir(
    target: str | Path, lock: Callable[[], AbstractContextManager[object]] | None = None
) -> Iterator[Path]:
    """Yield an empty temporary directory that replaces ``target`` when the block succeeds.

    ``target`` may exist (it is replaced whole: files of the old one not written again are
    gone) or not. The swap is ``target`` -> ``target.old``, temporary -> ``target``, then
    ``target.old`` removed; readers use :func:`existing_dir` to find the one complete copy
    at every moment. On an exception in the block ``target`` is untouched. ``lock``: a
    context manager held around the two renames (e.g. ``dir_lock(parent, exclusive=True)``),
    not while the block writes.
    """
    target = Path(target)
    old = old_path(target)
    with _tmp_dir(target) as tmp:
        yield tmp
        with lock() if lock is not None else contextlib.nullcontext():
            if target.exists():
                if old.exists():
                    # The leftover of a swap killed after its second rename: the target is
                    # complete, so this copy is not needed.
                    _remove(old)
                _rename(target, old)
            _rename(tmp, target)
    if old.exists():
        _remove(old)


@contextlib.contextmanager
def dir_lock(directory: str | Path, exclusive: bool) -> Iterator[None]:
    """An advisory lock on ``directory/.swap.lock``: shared for a reader while it opens what
    :func:`replace_dir` swaps in ``directory``, exclusive for the swap's renames. Released
    when the block ends (or the process dies). Without write access to ``directory`` (a
    read-only copy, which nothing swaps) or without POSIX locks, no lock is taken."""
    try:
        handle = open(Path(directory) / LOCK_NAME, "a+b") if fcntl is not None else None
    except OSError:
        handle = None
    if handle is None:
        yield
        return
    with handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


@contextlib.contextmanager
def create_dir(target: str | Path) -> Iterator[Path]:
    """Yield an empty temporary directory that becomes ``target`` when the block succeeds.

    For a directory made once and then only read (a converted model): if another writer
    made ``target`` while the block ran, its result is kept and ours removed, since renaming
    ours over it would pull files from under its readers. An empty ``target`` is replaced.

    Raises:
        OSError: ``target`` could not be made (and is not a directory made by another writer).
    """
    target = Path(target)
    with _tmp_dir(target) as tmp:
        yield tmp
        if target.is_dir() and not any(target.iterdir()):
            target.rmdir()
        try:
            _rename(tmp, target)
        except OSError:
            if not target.is_dir():
                raise
            _remove(tmp)  # a concurrent writer finished first


def nearest_existing(path: str | Path) -> Path:
    """``path``, or the nearest of its parents that exists: where a directory to be made at
    ``path`` would be made (checked before long work, which would otherwise end in mkdir's
    traceback when it is a file)."""
    path = Path(path)
    return next(p for p in (path, *path.parents) if p.exists())  # "." or "/" ends a relative or absolute path


def existing_dir(target: str | Path) -> Path:
    """``target``, or ``target.old`` when only that exists (a :func:`replace_dir` killed
    between its two renames); ``target`` when neither exists, for the caller's error."""
    target = Path(target)
    old = old_path(target)
    if not target.exists() and old.is_dir():
        return old
    return target


def remove_stale_tmp(target: Path) -> None:
    """Remove ``.<name>.tmp-<pid>-*`` siblings of ``target`` left by dead processes.

    A temporary directory whose writer (same host) still runs is left alone, so two
    concurrent writers do not destroy each other's work.
    """
    for stale in target.parent.glob(f".{target.name}{TMP_INFIX}*"):
        pid_text = stale.name.rsplit(TMP_INFIX, 1)[1].split("-", 1)[0]
        if pid_text.isdigit() and _alive(int(pid_text)):
            continue
        _remove(stale)


def _alive(pid: int) -> bool:
    """Whether a process with this id exists (signal 0 probes without signalling)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
