"""What every split shares, speech corpus or text task: rows in memory, cached signal columns.

A split holds its kept rows (after filtering and seeded sampling) as dicts. Complexity
signals are cached columns ``signal_<name>`` (written by ``flexispeech signals``) and are
read from the rows, never recomputed. Subclasses say how a row becomes an ``Example``
(``__getitem__``), what the batch sampler buckets by (``durations``) and what an evaluation
keeps about a row (``record``): :class:`~flexispeech.data.speech.CorpusSplit` and
:class:`~flexispeech.data.text.TextTaskSplit`.
"""

from __future__ import annotations

import math
import random
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from flexispeech.errors import FlexispeechError
from flexispeech.models.family import Example

SIGNAL_PREFIX = "signal_"  # cached signal columns: signal_duration, signal_snr_db, ...


def signal_columns(column_names: Sequence[str]) -> list[str]:
    """The signal names cached in a split (``signal_snr_db`` -> ``snr_db``)."""
    return [c[len(SIGNAL_PREFIX) :] for c in column_names if c.startswith(SIGNAL_PREFIX)]


def _as_float(value: Any) -> float:
    return float("nan") if value is None else float(value)


def _as_signal(value: Any) -> float | list[float]:
    """A cached signal value: a float (NaN when missing), or a list of floats for a vector
    signal (``signal_embedding``)."""
    if isinstance(value, (list, tuple)):
        return [_as_float(v) for v in value]
    return _as_float(value)


def _stack(values: list[Any]) -> torch.Tensor:
    """One signal of many rows: [N] float32, or [N, d] for a vector signal (missing rows NaN)."""
    width = next((len(v) for v in values if isinstance(v, (list, tuple))), None)
    if width is None:
        return torch.tensor([_as_float(v) for v in values], dtype=torch.float32)
    rows = [_as_signal(v) if isinstance(v, (list, tuple)) else [math.nan] * width for v in values]
    return torch.tensor(rows, dtype=torch.float32)


def sample_rows(rows: list[dict[str, Any]], max_examples: int | None, seed: int) -> list[dict[str, Any]]:
    """At most ``max_examples`` of ``rows``, drawn by a seeded shuffle, in their order."""
    if max_examples is None or max_examples >= len(rows):
        return rows
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    return [rows[i] for i in sorted(order[:max_examples])]


def row_signals(row: dict[str, Any], names: Sequence[str]) -> dict[str, Any]:
    """The cached signals ``names`` of one row (NaN where a value is missing; a list of
    floats for a vector signal)."""
    return {name: _as_signal(row[SIGNAL_PREFIX + name]) for name in names}


def stacked_signals(rows: Sequence[dict[str, Any]], names: Sequence[str]) -> dict[str, torch.Tensor]:
    """The cached signals of ``rows``, name -> [len(rows)] float32 ([len(rows), d] for a vector signal)."""
    return {n: _stack([r[SIGNAL_PREFIX + n] for r in rows]) for n in names}


def rows_column(rows: Sequence[dict[str, Any]], name: str, source: Path) -> list[Any]:
    """Column ``name`` of ``rows`` (raises naming the column when ``source`` lacks it)."""
    if name not in rows[0]:
        raise FlexispeechError(f"{source}: no column {name!r}; run `flexispeech signals` first?")
    return [r[name] for r in rows]


def signals_tensor(examples: Sequence[Example]) -> dict[str, torch.Tensor]:
    """The examples' signals as name -> [batch] float32 (names common to all examples)."""
    names = set(examples[0].signals)
    for ex in examples[1:]:
        names &= set(ex.signals)
    return {n: _stack([ex.signals[n] for ex in examples]) for n in sorted(names)}


class Split(Dataset, ABC):
    """The kept rows of one split and their cached signals; items are ``Example``s.

    Args:
        corpus_dir: the corpus or task directory the rows come from (named in errors).
        rows: the kept rows; an empty list raises ``FlexispeechError`` with ``empty``.
        column_names: the split's columns (``signal_*`` ones are its cached signals).
        empty: what the error says after ``<corpus_dir>: `` when no row is left.
    """

    def __init__(
        self, corpus_dir: Path, rows: list[dict[str, Any]], column_names: Sequence[str], empty: str
    ) -> None:
        if not rows:
            raise FlexispeechError(f"{corpus_dir}: {empty}")
        self.corpus_dir = corpus_dir
        self.rows = rows
        self.signal_names = signal_columns(column_names)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    @abstractmethod
    def durations(self) -> list[float]:
        """One length per row, what the length-bucketing sampler sorts by."""

    @abstractmethod
    def record(self, index: int) -> dict[str, Any]:
        """What an evaluation keeps about row ``index`` besides the prediction."""

    @abstractmethod
    def __getitem__(self, index: int) -> Example:
        """Row ``index`` as an ``Example`` (speech: audio decoded here)."""

    def signals(self, index: int) -> dict[str, float]:
        """The cached signals of row ``index``."""
        return row_signals(self.rows[index], self.signal_names)

    def signals_of(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        """The cached signals of rows ``indices``, name -> [len(indices)] float32 (in that
        order): what a batch is routed on, read without decoding any audio."""
        return stacked_signals([self.rows[i] for i in indices], self.signal_names)

    def all_signals(self) -> dict[str, torch.Tensor]:
        """Every row's cached signals, name -> [len(self)] float32 (for router calibration)."""
        return stacked_signals(self.rows, self.signal_names)

    def column(self, name: str) -> list[Any]:
        """A column of the kept rows (raises naming the column if the split lacks it)."""
        return rows_column(self.rows, name, self.corpus_dir)
