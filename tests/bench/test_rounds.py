"""Interleaved rounds (``flexispeech.bench.rounds``): every setup once per round, the order
rotated, warm-up untimed, the median over rounds, failures of optional setups dropped."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from torch import nn

import flexispeech.bench.rounds as rounds
from flexispeech.bench.rounds import Setup, Timed, run_rounds
from flexispeech.bench.spec import BenchSpec


class Machine:
    """A fake host clock and a log of what ran: each step advances the clock by its own
    next duration, so every timed value is known exactly."""

    def __init__(self) -> None:
        self.now = 0.0
        self.events: list[str] = []

    def perf_counter(self) -> float:
        return self.now

    def step(self, name: str, durations: list[float]) -> None:
        self.events.append(name)
        self.now += durations.pop(0)

    def setup(self, name: str, rows: dict[str, list[float]], fail: bool = False) -> Setup:
        @contextmanager
        def enter() -> Iterator[list[Timed]]:
            self.events.append(f"enter {name}")
            if fail:
                raise RuntimeError(f"{name} cannot be built")
            yield [
                Timed("train", row, lambda row=row, d=durations: self.step(row, d))
                for row, durations in rows.items()
            ]

        return Setup(name, enter, optional=fail)


@pytest.fixture
def machine(monkeypatch: pytest.MonkeyPatch) -> Machine:
    m = Machine()
    monkeypatch.setattr(rounds.time, "perf_counter", m.perf_counter)
    return m


def test_each_round_enters_every_setup_in_rotated_order_and_times_each_row_once(machine: Machine) -> None:
    # warmup 2: a row's first round has 2 untimed calls, later rounds 1; the durations of
    # the untimed calls are huge, so a timed value that included one would show.
    a = {"a1": [100.0, 100.0, 0.3, 100.0, 0.1, 100.0, 0.2], "a2": [100.0, 100.0, 1.0, 100.0, 3.0, 100.0, 2.0]}
    b = {"b1": [100.0, 100.0, 5.0, 100.0, 7.0, 100.0, 6.0]}
    samples = run_rounds(
        [machine.setup("A", a), machine.setup("B", b)], BenchSpec(device="cpu", warmup=2, reps=3)
    )
    enters = [e for e in machine.events if e.startswith("enter")]
    assert enters == ["enter A", "enter B", "enter B", "enter A", "enter A", "enter B"]  # rotated by one
    assert all(not d for d in (*a.values(), *b.values()))  # every call ran, none extra
    by = {s.name: s for s in samples}
    assert by["a1"].seconds == pytest.approx([0.3, 0.1, 0.2]) and by["a1"].median == pytest.approx(0.2)
    assert by["a2"].median == pytest.approx(2.0) and by["b1"].median == pytest.approx(6.0)
    # the table's order is the setups' and rows' order, whatever setup a round began with
    assert [s.name for s in samples] == ["a1", "a2", "b1"]


def test_rows_of_one_setup_alternate_within_each_round(machine: Machine) -> None:
    rows = {"r64": [1.0, 1.0, 1.0, 1.0], "r4": [1.0, 1.0, 1.0, 1.0]}
    run_rounds([machine.setup("A", rows)], BenchSpec(device="cpu", warmup=1, reps=2))
    assert machine.events == ["enter A", "r64", "r64", "r4", "r4", "enter A", "r64", "r64", "r4", "r4"]


def test_an_optional_setup_that_fails_is_dropped_with_a_log_line(machine: Machine) -> None:
    log: list[str] = []
    samples = run_rounds(
        [machine.setup("A", {"a": [1.0] * 6}), machine.setup("graphed", {}, fail=True)],
        BenchSpec(device="cpu", warmup=1, reps=3),
        log=log.append,
    )
    assert [s.name for s in samples] == ["a"] and len(samples[0].seconds) == 3
    assert machine.events.count("enter graphed") == 1  # not retried in later rounds
    dropped = [line for line in log if "dropped" in line]
    assert len(dropped) == 1 and "graphed: dropped (RuntimeError: graphed cannot be built)" in dropped[0]
    assert sum("round" in line and "done" in line for line in log) == 3  # progress, once per round


def test_a_required_setup_that_fails_stops_the_run(machine: Machine) -> None:
    bad = machine.setup("floor", {}, fail=True)
    bad.optional = False
    with pytest.raises(RuntimeError, match="floor cannot be built"):
        run_rounds([bad], BenchSpec(device="cpu", warmup=0, reps=2))


def test_each_row_runs_in_its_own_mode(machine: Machine) -> None:
    module = nn.Linear(2, 2)
    seen: list[bool] = []

    @contextmanager
    def enter() -> Iterator[list[Timed]]:
        yield [
            Timed("train", "t", lambda: seen.append(module.training), module, train=True),
            Timed("infer", "i", lambda: seen.append(module.training), module, train=False),
        ]

    run_rounds([Setup("S", enter)], BenchSpec(device="cpu", warmup=0, reps=2))
    assert seen == [True, False, True, False]


def test_spread_is_half_the_interquartile_range_over_the_median() -> None:
    s = rounds.Samples("train", "x", False, [1.0, 2.0, 3.0, 4.0, 5.0])
    q1, _, q3 = (1.5, 3.0, 4.5)  # statistics.quantiles' default (exclusive) method
    assert s.spread == pytest.approx((q3 - q1) / 2 / 3.0)
    assert rounds.Samples("train", "y", False, [1.0, 2.0, 9.0]).spread is None  # too few to say


def test_keep_times_only_the_rows_it_accepts_and_drops_a_setup_with_none(machine: Machine) -> None:
    samples = run_rounds(
        [machine.setup("A", {"a1": [1.0] * 4, "a2": [2.0] * 4}), machine.setup("B", {"b1": [3.0] * 4})],
        BenchSpec(device="cpu", warmup=1, reps=2),
        keep=lambda row: row.name != "a2" and row.name != "b1",
    )
    assert [s.name for s in samples] == ["a1"]
    assert machine.events.count("enter B") == 1  # entered once, then left out
    assert "a2" not in machine.events and "b1" not in machine.events  # never called
