"""Where a training run's time goes: utterances per second, and the share spent waiting.

A GPU step of a small model takes tens of milliseconds; reading, featurising or augmenting
a batch can take longer, and then the GPU idles. ``Throughput`` times the three things the
training process does besides the step itself: waiting for the loader's next batch,
augmenting it (``training.augmented``, in this process) and validating. Each line of
train_log.jsonl gets the utterances per second and the share of wall time spent waiting
for data since the line before; train_summary.json gets the totals.

Times are host wall times, and on a GPU the host runs ahead of the device: nothing in
a training step or in the augmentation waits for the device (host values reach it through
pinned memory, ``host_copy``; the per-rank losses are read when a line is logged;
tests/training/test_no_host_sync.py), so the host augments the next batch while the
device still runs the previous step, and ``augment_s`` is the host's own work on the
batch. Anything that did wait (a blocking copy, a read back) would put the previous
step's backward pass and optimizer step inside ``augment_s``, as it did before the loop
lost its syncs (benchmarks/RESULTS.md, round 10). ``augment_gpu_s`` (CUDA only) is the augmentation's own share of the device's time,
from two CUDA events around it: from when the device finished the work queued before it
to when it finished the augmentation's last kernel (idle gaps while the host works on the
batch count; the previous step does not). The events add no host sync: they are read
when a line is logged, after the loss read, and at the end. Runs that share a GPU see each
other's kernels in both times.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch

T = TypeVar("T")


def stream_marker(device: torch.device | None) -> Any | None:
    """A timing event recorded now on ``device``'s current CUDA stream; None elsewhere (CPU
    ops are synchronous: the wall time is the work)."""
    if device is None or device.type != "cuda":
        return None
    event = torch.cuda.Event(enable_timing=True)
    event.record(torch.cuda.current_stream(device))
    return event


@dataclass
class Throughput:
    wait_s: float = 0.0
    """Seconds spent waiting for the loader's next batch."""
    augment_s: float = 0.0
    """Host seconds spent making batches in the training process (augmenting, or features on
    the GPU); on a GPU they include the wait for the previous step's queued work."""
    augment_gpu_s: float | None = None
    """Device seconds of that batch making, the previous step's work left out (CUDA only)."""
    validate_s: float = 0.0
    """Seconds spent on validation."""
    examples: int = 0
    """Utterances (or text examples) trained on, every process's together."""
    _mark: tuple[float, float, float, int] = field(default_factory=lambda: (time.perf_counter(), 0.0, 0.0, 0))
    _spans: list[tuple[Any, Any]] = field(default_factory=list)  # augmentation events not yet read

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

    @contextmanager
    def augmenting(self, device: torch.device | None = None) -> Iterator[None]:
        """Time the block as ``augment_s``; on a CUDA ``device`` also bracket its device work
        with two events for ``augment_gpu_s`` (read later: reading them now would sync)."""
        begin = stream_marker(device)
        with self.timing("augment_s"):
            yield
        if begin is not None:
            self._spans.append((begin, stream_marker(device)))

    def _read_spans(self, wait: bool) -> None:
        """Add the finished augmentation spans to ``augment_gpu_s`` (``wait``: all of them,
        waiting for the device; otherwise only those already done, without a sync)."""
        pending = []
        for begin, end in self._spans:
            if wait:
                end.synchronize()
            elif not end.query():
                pending.append((begin, end))
                continue
            self.augment_gpu_s = (self.augment_gpu_s or 0.0) + begin.elapsed_time(end) / 1e3
        self._spans = pending

    def interval(self) -> dict[str, float]:
        """``utt_per_s`` and ``data_wait_share`` since the last call (validation time left out)."""
        now = time.perf_counter()
        self._read_spans(wait=False)  # after the loss read: done, and the list stays short
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
        self._read_spans(wait=True)
        device = {} if self.augment_gpu_s is None else {"augment_gpu_s": round(self.augment_gpu_s, 2)}
        return {
            "utt_per_s": round(self.examples / stepping, 2),
            "data_wait_s": round(self.wait_s, 2),
            "data_wait_share": round(self.wait_s / stepping, 4),
            "augment_s": round(self.augment_s, 2),
            **device,
            "validate_s": round(self.validate_s, 2),
        }
