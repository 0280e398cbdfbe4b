"""Speech corpus splits: rows -> Examples (audio decoded lazily); the length-bucketed sampler.

Complexity signals are read from cached columns (``signal_<name>``, written by
``flexispeech signals``; see :mod:`flexispeech.data.split`); the batch step
(:mod:`flexispeech.training.batch`) routes each batch on them, in training exactly as at
inference.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from torch.utils.data import Sampler

from flexispeech.data.corpus import load_corpus, load_row_audio
from flexispeech.data.split import (  # noqa: F401  (the names this module always exported)
    SIGNAL_PREFIX,
    Split,
    row_signals,
    rows_column,
    sample_rows,
    signal_columns,
    signals_tensor,
    stacked_signals,
)
from flexispeech.models.family import Example, ModelFamily


def channel_for_rate(sample_rate: int) -> str:
    """ "telephone" for a recording at 8 kHz or less (a narrowband line's rate), else "wideband"."""
    return "telephone" if sample_rate <= 8000 else "wideband"


def channel_of(row: dict[str, Any]) -> str | None:
    """A row's channel: its ``channel`` column (wideband | telephone), else the one its
    ``sample_rate`` says (realspeech corpora prepared before the column existed have only
    that), else None."""
    if row.get("channel"):
        return str(row["channel"])
    rate = row.get("sample_rate")
    return channel_for_rate(int(rate)) if rate else None


def scalar_signals(signals: dict[str, Any]) -> dict[str, Any]:
    """The scalar ones of an utterance's signals: what an evaluation keeps of them. A vector
    signal (the pooled encoder embedding: 384-1280 numbers) would make every results.json
    tens of times larger."""
    return {k: v for k, v in signals.items() if not isinstance(v, list)}


class CorpusSplit(Split):
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
        ds = load_corpus(Path(corpus_dir), split)
        rows = ds.to_list()
        if max_duration is not None:
            rows = [r for r in rows if r["duration"] <= max_duration]
        rows = sample_rows(rows, max_examples, seed)
        super().__init__(
            Path(corpus_dir),
            rows,
            ds.column_names,
            f"split {split!r} has no rows left (max_duration={max_duration})",
        )

    @property
    def durations(self) -> list[float]:
        """Seconds of audio per row."""
        return [float(r["duration"]) for r in self.rows]

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
            "channel": channel_of(row),
            "signals": scalar_signals(self.signals(index)),
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


def make_collate(
    family: ModelFamily, processor: Any, train: bool = True
) -> Callable[[list[Example]], dict[str, Any]]:
    """A DataLoader collate_fn giving ``{"inputs": family batch, "signals": ..., "ids": [...]}``."""

    def collate(examples: list[Example]) -> dict[str, Any]:
        return {
            "inputs": family.collate(processor, examples, train=train),
            "signals": signals_tensor(examples),
            "ids": [ex.id for ex in examples],
        }

    return collate
