"""The flexispeech cache directory and atomic creation of directories in it.

A converted checkpoint is written into a temporary sibling directory and renamed into
place only when complete, with a marker file inside: an interrupted conversion leaves
at most a ``.tmp-*`` directory, which is never mistaken for a result and is replaced by
the next attempt.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

from flexispeech.errors import FlexispeechError

CACHE_ENV = "FLEXISPEECH_CACHE"
# Written last into a finished directory; its presence is what "complete" means.
COMPLETE_MARKER = ".flexispeech-complete"
TMP_INFIX = ".tmp-"


def cache_root() -> Path:
    """``$FLEXISPEECH_CACHE``, else the platform's user cache directory + ``flexispeech``.

    The platform rule is three lines (XDG on Linux, ~/Library/Caches on macOS,
    %LOCALAPPDATA% on Windows), not worth a dependency on platformdirs.
    """
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA", Path.home() / "AppData" / "Local"))
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Caches"
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "flexispeech"


def is_complete(directory: Path) -> bool:
    """Whether ``directory`` was finished by :func:`atomic_dir`."""
    return (directory / COMPLETE_MARKER).is_file()


@contextlib.contextmanager
def atomic_dir(target: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary directory that becomes ``target`` when the block succeeds.

    The temporary directory is ``<parent>/.<name>.tmp-<pid>-<random>``; on an exception
    it is removed, and leftovers of killed processes are removed by the next call. If another process finished ``target`` first (a concurrent conversion), its
    result is kept and ours is discarded.

    Raises:
        FlexispeechError: ``target`` exists and is not empty, and ``overwrite`` is False.
    """
    target = Path(target)
    if target.exists() and any(target.iterdir()) and not overwrite:
        raise FlexispeechError(f"{target}: already exists and is not empty (remove it first)")
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_tmp(target)
    tmp = target.parent / f".{target.name}{TMP_INFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        (tmp / COMPLETE_MARKER).write_text("ok\n")
        if overwrite and target.exists():
            shutil.rmtree(target)
        elif target.is_dir() and not any(target.iterdir()):
            target.rmdir()
        try:
            os.rename(tmp, target)
        except OSError:
            if not is_complete(target):
                raise
            # A concurrent writer won the race with an equally complete result.
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def remove_stale_tmp(target: Path) -> None:
    """Remove ``.<name>.tmp-<pid>-*`` siblings of ``target`` left by dead processes.

    A temp dir whose writer (same host) is still running is left alone, so two
    concurrent conversions do not destroy each other's work.
    """
    for stale in target.parent.glob(f".{target.name}{TMP_INFIX}*"):
        pid_text = stale.name.rsplit(TMP_INFIX, 1)[1].split("-", 1)[0]
        if pid_text.isdigit() and _alive(int(pid_text)):
            continue
        shutil.rmtree(stale, ignore_errors=True)


def _alive(pid: int) -> bool:
    """Whether a process with this id exists (signal 0 probes without signalling)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
