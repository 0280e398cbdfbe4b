"""Where a training run's time goes: utterances per second, and the share spent waiting.

A GPU step of a small model takes tens of milliseconds; reading, featurising or augmenting
a batch can take longer, and then the GPU idles. ``Throughput`` times the three things the
training process does besides the step itself: waiting for the loader's next batch,
augmenting it (``training.augmented``, in this process) and validating. Each line of
train_log.jsonl gets the utterances per second and the share of wall time spent waiting
for data since the line before; train_summary.json gets the totals. Times are host wall
times: the loss is read back after every micro-batch, so a step's GPU time is inside them.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass
class Throughput:
    wait_s: float = 0.0
    """Seconds spent waiting for the loader's next batch."""
    augment_s: float = 0.0
    """Seconds spent making batches in the training process (augmenting, or features on the GPU)."""
    validate_s: float = 0.0
    """Seconds spent on validation."""
    examples: int = 0
    """Utterances (or text examples) trained on, every process's together."""
    _mark: tuple[float, float, float, int] = field(default_factory=lambda: (time.perf_counter(), 0.0, 0.0, 0))

    def timed(self, loader: Iterable[T]) -> Iterator[T]:
        """The items of ``loader``, the time spent fetching each added to ``wait_s``."""
        items = iter(loader)
        while True:
            start = time.perf_counter()
            try:
                item = next(items)
            except StopIteration:
                return
            self.wait_s += time.perf_counter() - start
            yield item

    @contextmanager
    def timing(self, what: str) -> Iterator[None]:
        """Add the block's wall time to ``what`` (``augment_s`` or ``validate_s``)."""
        start = time.perf_counter()
        try:
            yield
        finally:
            setattr(self, what, getattr(self, what) + time.perf_counter() - start)

    def interval(self) -> dict[str, float]:
        """``utt_per_s`` and ``data_wait_share`` since the last call (validation time left out)."""
        now = time.perf_counter()
        t0, wait0, val0, n0 = self._mark
        elapsed = max(now - t0 - (self.validate_s - val0), 1e-9)
        self._mark = (now, self.wait_s, self.validate_s, self.examples)
        return {
            "utt_per_s": round((self.examples - n0) / elapsed, 2),
            "data_wait_share": round((self.wait_s - wait0) / elapsed, 4),
        }

    def summary(self, train_time_s: float) -> dict[str, Any]:
        """Totals for train_summary.json over ``train_time_s`` seconds of this session."""
        stepping = max(train_time_s - self.validate_s, 1e-9)
        return {
            "utt_per_s": round(self.examples / stepping, 2),
            "data_wait_s": round(self.wait_s, 2),
            "data_wait_share": round(self.wait_s / stepping, 4),
            "augment_s": round(self.augment_s, 2),
            "validate_s": round(self.validate_s, 2),
        }
