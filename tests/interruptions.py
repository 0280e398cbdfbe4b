"""Fault injection for the atomic writers: a writer killed before any one of its steps.

Every step of :mod:`flexispeech.atomic` that changes what a reader can see is a call of
``atomic._rename`` or ``atomic._remove``. :func:`killed_before` lets the first ``k`` of
them run and fails every later one, as after a ``kill -9`` (no cleanup runs either).
:func:`views_at_every_kill` replays a writer killed before step 0, 1, 2, ... on a fresh
copy of the old state until it runs through, and records what a reader sees each time.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from flexispeech import atomic


class Killed(BaseException):
    """The simulated kill: a BaseException, so no ``except Exception`` of a writer eats it."""


@contextlib.contextmanager
def killed_before(step: int) -> Iterator[list[str]]:
    """Within the block, ``flexispeech.atomic`` takes its first ``step`` renames/removals and
    raises :class:`Killed` at every later one. Yields the steps taken, as text."""
    taken: list[str] = []
    rename, remove = atomic._rename, atomic._remove

    def guard(what: str) -> None:
        if len(taken) >= step:
            raise Killed(what)
        taken.append(what)

    def killable_rename(src: Path, dst: Path) -> None:
        guard(f"rename {src.name} -> {dst.name}")
        rename(src, dst)

    def killable_remove(path: Path) -> None:
        guard(f"remove {path.name}")
        remove(path)

    atomic._rename, atomic._remove = killable_rename, killable_remove
    try:
        yield taken
    finally:
        atomic._rename, atomic._remove = rename, remove


def views_at_every_kill(
    root: Path, make_old: Callable[[Path], Any], write: Callable[[Path], Any], read: Callable[[Path], Any]
) -> tuple[Any, Any, list[tuple[list[str], Any]]]:
    """What a reader sees after ``write`` is killed before each of its steps in turn.

    For k = 0, 1, ...: a fresh directory ``root/k<k>`` gets the old state (``make_old``),
    ``write(dir)`` runs killed before its k-th step, and ``read(dir)`` is recorded; this
    stops at the first k at which ``write`` completes.

    Returns:
        (the view of the old state, the view after the complete write, [(steps taken
        before the kill, the view then)] for each kill).
    """
    old_dir = root / "old"
    old_dir.mkdir(parents=True)
    make_old(old_dir)
    old_view = read(old_dir)
    kills: list[tuple[list[str], Any]] = []
    for k in range(100):
        d = root / f"k{k}"
        d.mkdir()
        make_old(d)
        with killed_before(k) as taken:
            try:
                write(d)
            except Killed:
                kills.append((list(taken), read(d)))
                continue
        return old_view, read(d), kills
    raise AssertionError("the writer never completed in 100 steps")
