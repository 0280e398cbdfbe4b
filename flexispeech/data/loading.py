"""Batches of a split read and collated ahead of their consumer, in DataLoader workers.

Decoding a split (``flexispeech eval``, ``signals``, ``calibrate``) reads each clip, makes
its features and hands the batch to the model. On a GPU the model is fast and the reading
is not: one process extracting 30-s log-mels for a batch of 64 takes longer than the
batch's decoding. ``load_batches`` moves that work into ``torch.utils.data.DataLoader``
worker processes, which run ahead of the model; with ``num_workers=0`` the same code runs
in the calling process (the default on a CPU, where the cores are the model's).

A row whose audio cannot be decoded does not end the run: the worker leaves it out and
reports it in ``Loaded.errors``, and the consumer records it as skipped.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any, Generic, TypeVar

from torch.utils.data import DataLoader, Dataset

from flexispeech.data.split import Split
from flexispeech.errors import AudioError
from flexispeech.models.example import Example

T = TypeVar("T")
MAX_DEFAULT_WORKERS = 8  # feature extraction for one GPU saturates well before this


@dataclass
class Loaded(Generic[T]):
    """One batch of a split, read and collated."""

    rows: list[int]
    """The split indices that loaded, in the order asked for."""
    examples: list[Example]
    """Their Examples (``audio`` dropped unless the loader keeps it: moving 30-s clips
    between processes would cost more than reading them)."""
    inputs: T | None
    """``collate(examples)``; None when no row of the batch loaded."""
    errors: list[tuple[int, str]]
    """``(split index, message)`` of each row that could not be read."""


class _Batches(Dataset):
    """The loader's dataset: a list of split indices in, a ``Loaded`` batch out."""

    def __init__(self, split: Split, collate: Callable[[list[Example]], Any], keep_audio: bool) -> None:
        self.split, self.collate, self.keep_audio = split, collate, keep_audio

    def __getitem__(self, rows: list[int]) -> Loaded:  # type: ignore[override]
        kept, examples, errors = [], [], []
        for i in rows:
            try:
                examples.append(self.split[i])
                kept.append(i)
            except AudioError as err:
                errors.append((i, str(err)))
        inputs = self.collate(examples) if examples else None
        if not self.keep_audio:
            examples = [replace(ex, audio=None) for ex in examples]
        return Loaded(kept, examples, inputs, errors)


def _as_is(loaded: Loaded) -> Loaded:
    return loaded


def default_workers(device: str) -> int:
    """Loader workers for decoding on ``device``: none on a CPU (its cores run the model),
    else up to ``MAX_DEFAULT_WORKERS``, leaving one core to the main process."""
    if not str(device).startswith("cuda"):
        return 0
    return max(0, min(MAX_DEFAULT_WORKERS, (os.cpu_count() or 1) - 1))


def load_batches(
    split: Split,
    order: Sequence[int],
    batch_size: int,
    collate: Callable[[list[Example]], T],
    num_workers: int = 0,
    keep_audio: bool = False,
) -> Iterator[Loaded[T]]:
    """The rows ``order`` of ``split`` in consecutive batches of ``batch_size``, each read
    and collated by ``collate`` in ``num_workers`` worker processes (0: here), in order.

    ``keep_audio`` keeps each Example's samples (for signals computed from the audio by the
    consumer); it implies ``num_workers=0``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    batches = [list(order[s : s + batch_size]) for s in range(0, len(order), batch_size)]
    workers = 0 if keep_audio else num_workers
    loader = DataLoader(
        _Batches(split, collate, keep_audio),
        batch_size=None,
        sampler=batches,  # type: ignore[arg-type]  # a list of index lists: one item per batch
        collate_fn=_as_is,
        num_workers=workers,
        # two batches ahead per worker keep a GPU fed; each can be 512 clips of 30 s
        prefetch_factor=2 if workers else None,
    )
    yield from loader
