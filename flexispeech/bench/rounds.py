"""Interleaved rounds: every row of a benchmark timed once per round, the rounds repeated.

Timing each variant to the end before the next one starts (``steps.time_fn``) lets drift
pick the winner: a CPU that slows down as it warms, another process, a caching allocator
that grows. On the 2-core CPU a sequential run put inference at rank 4 at 0.73x the base
model's time and the rank-0 training step at 0.84x the floor, both impossible. So each
round enters every *setup* (one state of the model: adapters injected, PEFT wrapped, a
CUDA graph captured) in turn, runs each of its steps untimed (warm-up) and then once timed,
and leaves it again; the reported time is the median over the rounds. Rows of one setup
(e.g. one adapter at ranks 64, 16 and 4) are timed next to each other in every round, and
the setups' order is rotated by one from round to round, so no row is always first.

Re-entering a setup every round costs untimed work (injecting adapters again, capturing a
graph again) and a warm-up step per row per round; that is the price of a fair order.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from flexispeech.bench.spec import BenchSpec


@dataclass
class Timed:
    """One row: its table ``kind`` (train, infer) and ``name``, the step ``fn``, and the
    ``module`` put in train (``train=True``) or eval mode before each call, outside the
    timer. ``graphed`` rows are also compared with the graphed base of their kind."""

    kind: str
    name: str
    fn: Callable[[], Any]
    module: nn.Module | None = None
    train: bool = True
    graphed: bool = False


@dataclass
class Setup:
    """A state of the model and the rows timed in it: ``enter()`` is a context manager
    that builds the state and yields its rows. ``optional``: a failure (e.g. a CUDA graph
    capture refused) drops the setup with a log line instead of stopping the run."""

    name: str
    enter: Callable[[], AbstractContextManager[list[Timed]]]
    optional: bool = False


@dataclass
class Samples:
    """The timed calls of one row, in seconds, in round order."""

    kind: str
    name: str
    graphed: bool
    seconds: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def spread(self) -> float | None:
        """Half the interquartile range over the median: the run's own noise for this row,
        e.g. 0.05 = about ±5 %; None with fewer than 4 rounds (too few to say)."""
        if len(self.seconds) < 4:
            return None
        q1, _, q3 = statistics.quantiles(self.seconds, n=4)
        return (q3 - q1) / 2 / self.median


def time_once(fn: Callable[[], Any], device: str) -> float:
    """Seconds of one call of ``fn``: device events on CUDA (the GPU's time from the first
    launch to the last), the host clock on a CPU."""
    if device.startswith("cuda"):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1000
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def run_rounds(
    setups: Sequence[Setup],
    spec: BenchSpec,
    log: Callable[[str], None] = print,
    keep: Callable[[Timed], bool] | None = None,
) -> list[Samples]:
    """Time every row of every setup once per round, for ``spec.reps`` rounds.

    A row is called ``spec.warmup`` times untimed before its first timed call, and
    ``min(spec.warmup, 1)`` times before each later one (the setup was built anew: new
    optimizer state, cold caches). Round ``i`` starts at setup ``i mod len(setups)``.

    ``keep``: only the rows it accepts are timed; a setup none of whose rows it accepts is
    entered once and then left out of the rounds.

    Returns:
        One ``Samples`` per row, in the order the rows first appeared (setups in the given
        order, rows in their setup's order), each with one time per round it ran in.
    """
    found: dict[tuple[str, str], Samples] = {}
    place: dict[tuple[str, str], tuple[int, int]] = {}  # (setup, row) index: the table's order
    live = list(enumerate(setups))
    began = time.perf_counter()
    for round_no in range(spec.reps):
        if not live:
            break
        start = round_no % len(live)
        for index, setup in live[start:] + live[:start]:
            try:
                with setup.enter() as all_rows:
                    rows = [(n, r) for n, r in enumerate(all_rows) if keep is None or keep(r)]
                    if not rows:
                        live = [(i, s) for i, s in live if s is not setup]
                    for row_no, row in rows:
                        key = (row.kind, row.name)
                        first = key not in found
                        if first:
                            found[key] = Samples(row.kind, row.name, row.graphed)
                            place[key] = (index, row_no)
                        if row.module is not None:
                            row.module.train(row.train)
                        for _ in range(spec.warmup if first else min(spec.warmup, 1)):
                            row.fn()
                        found[key].seconds.append(time_once(row.fn, spec.device))
            except Exception as err:
                if not setup.optional:
                    raise
                log(f"  {setup.name}: dropped ({type(err).__name__}: {str(err)[:300]})")
                live = [(i, s) for i, s in live if s is not setup]
                if spec.device.startswith("cuda"):
                    torch.cuda.empty_cache()  # a failed capture leaves its private pool behind
            finally:
                if spec.device.startswith("cuda"):
                    torch.cuda.synchronize()
        log(f"  round {round_no + 1}/{spec.reps} done ({time.perf_counter() - began:.0f} s)")
    return [found[key] for key in sorted(found, key=place.__getitem__)]
