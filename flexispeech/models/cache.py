"""The flexispeech cache directory and atomic creation of directories in it.

A converted checkpoint is written into a temporary sibling directory and renamed into
place only when complete, with a marker file inside (:mod:`flexispeech.atomic`): an
interrupted conversion leaves at most a ``.tmp-*`` directory, which is never mistaken for
a result and is removed by the next attempt.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from flexispeech.atomic import create_dir, replace_dir
from flexispeech.errors import FlexispeechError

CACHE_ENV = "FLEXISPEECH_CACHE"
# Written last into a finished directory; its presence is what "complete" means.
COMPLETE_MARKER = ".flexispeech-complete"


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
    """Yield a fresh temporary directory that becomes ``target``, marked complete, when the
    block succeeds.

    Without ``overwrite`` it is :func:`flexispeech.atomic.create_dir`: if another process
    finished ``target`` first (a concurrent conversion), its result is kept and ours
    discarded. With ``overwrite`` an existing ``target`` is replaced by
    :func:`flexispeech.atomic.replace_dir` (two renames, the old copy kept until the new
    one is in place). On an exception the temporary directory is removed.

    Raises:
        FlexispeechError: ``target`` exists and is not empty, and ``overwrite`` is False.
    """
    target = Path(target)
    if target.exists() and any(target.iterdir()) and not overwrite:
        raise FlexispeechError(f"{target}: already exists and is not empty (remove it first)")
    with (replace_dir if overwrite else create_dir)(target) as tmp:
        yield tmp
        (tmp / COMPLETE_MARKER).write_text("ok\n")
