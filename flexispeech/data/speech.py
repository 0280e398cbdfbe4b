"""From a corpus split to batches: rows -> Examples (audio decoded lazily) -> family inputs.

Complexity signals are read from cached columns (``signal_<name>``, written by
``flexispeech signals``); the batch carries them so that the router runs on the batch,
in training exactly as at inference.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset, Sampler

from flexispeech.data.corpus import load_corpus, load_row_audio
from flexispeech.errors import FlexispeechError
from flexispeech.models.family import Example, ModelFamily

SIGNAL_PREFIX = "signal_"  # cached signal columns: signal_duration, signal_snr_db, ...


def signal_columns(column_names: Sequence[str]) -> list[str]:
    """The signal names cached in a split (``signal_snr_db`` -> ``snr_db``)."""
    return [c[len(SIGNAL_PREFIX) :] for c in column_names if c.startswith(SIGNAL_PREFIX)]


def _as_float(value: Any) -> float:
    return float("nan") if value is None else float(value)


def sample_rows(rows: list[dict[str, Any]], max_examples: int | None, seed: int) -> list[dict[str, Any]]:
    """At most ``max_examples`` of ``rows``, drawn by a seeded shuffle, in their order."""
    if max_examples is None or max_examples >= len(rows):
        return rows
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    return [rows[i] for i in sorted(order[:max_examples])]


def row_signals(row: dict[str, Any], names: Sequence[str]) -> dict[str, float]:
    """The cached signals ``names`` of one row (NaN where a value is missing)."""
    return {name: _as_float(row[SIGNAL_PREFIX + name]) for name in names}


def stacked_signals(rows: Sequence[dict[str, Any]], names: Sequence[str]) -> dict[str, torch.Tensor]:
    """Every row's cached signals, name -> [len(rows)] float32 (for router calibration)."""
    return {n: torch.tensor([_as_float(r[SIGNAL_PREFIX + n]) for r in rows], dtype=torch.float32) for n in names}


def rows_column(rows: Sequence[dict[str, Any]], name: str, source: Path) -> list[Any]:
    """Column ``name`` of ``rows`` (raises naming the column when ``source`` lacks it)."""
    if name not in rows[0]:
        raise FlexispeechError(f"{source}: no column {name!r}; run `flexispeech signals` first?")
    return [r[name] for r in rows]


class CorpusSplit(Dataset):
    """One split of a corpus as ``Example`` items; audio is decoded in ``__getitem__``.

    Args:
        corpus_dir: a corpus written by ``flexispeech prepare``.
        split: which split.
        max_duration: drop rows longer than this many seconds (None keeps all).
        max_examples: keep the first N rows after a seeded shuffle (None keeps all).
        seed: the shuffle's seed.
    """

    def __init__(
        self,
        corpus_dir: str | Path,
        split: str,
        max_duration: float | None = None,
        max_examples: int | None = None,
        seed: int = 0,
    ) -> None:
        self.corpus_dir = Path(corpus_dir)
        ds = load_corpus(self.corpus_dir, split)
        self.signal_names = signal_columns(ds.column_names)
        rows = ds.to_list()
        if max_duration is not None:
            rows = [r for r in rows if r["duration"] <= max_duration]
        rows = sample_rows(rows, max_examples, seed)
        if not rows:
            raise FlexispeechError(f"{self.corpus_dir}: split {split!r} has no rows left (max_duration={max_duration})")
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def durations(self) -> list[float]:
        return [float(r["duration"]) for r in self.rows]

    def signals(self, index: int) -> dict[str, float]:
        """The cached signals of row ``index``."""
        return row_signals(self.rows[index], self.signal_names)

    def all_signals(self) -> dict[str, torch.Tensor]:
        """Every row's cached signals, name -> [len(self)] float32 (for router calibration)."""
        return stacked_signals(self.rows, self.signal_names)

    def column(self, name: str) -> list[Any]:
        """A column of the kept rows (raises naming the column if the corpus lacks it)."""
        return rows_column(self.rows, name, self.corpus_dir)

    def record(self, index: int) -> dict[str, Any]:
        """What an evaluation keeps about row ``index`` besides the prediction."""
        row = self.rows[index]
        return {
            "id": row["id"],
            "ref": row["text"],
            "duration": float(row["duration"]),
            "snr_db": row.get("snr_db"),
            "voice": row.get("voice", row.get("speaker")),
            "seen_voice": row.get("seen_voice"),
            "signals": self.signals(index),
        }

    def __getitem__(self, index: int) -> Example:
        row = self.rows[index]
        return Example(
            id=str(row["id"]),
            text=str(row["text"]),
            audio=load_row_audio(self.corpus_dir, row),
            signals=self.signals(index),
        )


class LengthBucketSampler(Sampler[list[int]]):
    """Batches of similar length (less padding), in a seeded random order per epoch.

    Indices are shuffled, cut into buckets of ``batch_size * bucket_batches`` items,
    sorted by length inside each bucket, cut into batches, and the batches shuffled.
    """

    def __init__(
        self,
        lengths: Sequence[float],
        batch_size: int,
        seed: int = 0,
        bucket_batches: int = 50,
        shuffle: bool = True,
        bucket_by_length: bool = True,
    ) -> None:
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.bucket_batches = bucket_batches
        self.shuffle = shuffle
        self.bucket_by_length = bucket_by_length
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order ``__iter__`` yields (the order is a function of it)."""
        self.epoch = epoch

    def batches(self, epoch: int) -> list[list[int]]:
        """All batches of ``epoch`` in order."""
        rng = random.Random(self.seed * 100_003 + epoch)
        order = list(range(len(self.lengths)))
        if self.shuffle:
            rng.shuffle(order)
        size = self.batch_size * self.bucket_batches if self.bucket_by_length else len(order)
        batches = []
        for start in range(0, len(order), size):
            bucket = order[start : start + size]
            if self.bucket_by_length:
                bucket.sort(key=lambda i: self.lengths[i])
            batches += [bucket[i : i + self.batch_size] for i in range(0, len(bucket), self.batch_size)]
        if self.shuffle:
            rng.shuffle(batches)
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches(self.epoch))

    def __len__(self) -> int:
        return math.ceil(len(self.lengths) / self.batch_size)


def signals_tensor(examples: Sequence[Example]) -> dict[str, torch.Tensor]:
    """The examples' signals as name -> [batch] float32 (names common to all examples)."""
    names = set(examples[0].signals)
    for ex in examples[1:]:
        names &= set(ex.signals)
    return {n: torch.tensor([ex.signals[n] for ex in examples], dtype=torch.float32) for n in sorted(names)}


def make_collate(family: ModelFamily, processor: Any, train: bool = True) -> Callable[[list[Example]], dict[str, Any]]:
    """A DataLoader collate_fn giving ``{"inputs": family batch, "signals": ..., "ids": [...]}``."""

    def collate(examples: list[Example]) -> dict[str, Any]:
        return {
            "inputs": family.collate(processor, examples, train=train),
            "signals": signals_tensor(examples),
            "ids": [ex.id for ex in examples],
        }

    return collate
