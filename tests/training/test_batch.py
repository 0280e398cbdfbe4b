"""The batch step: rows -> signals -> ranks -> rank order -> inputs, and the training plan."""

from __future__ import annotations

from pathlib import Path

import torch

from flexispeech.data.speech import LengthBucketSampler
from flexispeech.data.split import SIGNAL_PREFIX, Split
from flexispeech.lora.router import RandomRouter
from flexispeech.models.family import Example
from flexispeech.training.batch import BatchPlan, prepare_batch, route_rows, train_loader


def by_snr(signals: dict[str, torch.Tensor], n: int) -> torch.Tensor:
    """A router: rank = the snr_db signal (so the expected order is easy to state)."""
    return signals["snr_db"].long()


def test_route_rows_sorts_by_rank_and_unsorts() -> None:
    signals = {"snr_db": torch.tensor([2.0, 8.0, 0.0, 8.0, 2.0])}
    batch = route_rows(["a", "b", "c", "d", "e"], signals, by_snr)
    assert batch.rows == ["b", "d", "a", "e", "c"]  # highest rank first, ties in the caller's order
    assert batch.ranks.tolist() == [8, 8, 2, 2, 0] and batch.order.tolist() == [1, 3, 0, 4, 2]
    assert batch.signals["snr_db"].tolist() == [8.0, 8.0, 2.0, 2.0, 0.0]
    assert batch.unsort(batch.rows) == ["a", "b", "c", "d", "e"]
    assert batch.unsort(batch.ranks.tolist()) == [2, 8, 0, 8, 2]
    plain = route_rows(["a", "b"], {"snr_db": torch.tensor([0.0, 8.0])}, None)
    assert plain.rows == ["a", "b"] and plain.ranks is None and plain.unsort(["x", "y"]) == ["x", "y"]


def test_routers_that_read_no_signal_route_rows_without_signals() -> None:
    """Rows of a corpus whose signals are not cached yet (the gpu recipe trains the random-
    rank and static runs while ``flexispeech signals`` runs beside them): a random or fixed
    router ranks every row, and the batch keeps no made-up signal; a router that reads a
    signal still names the one missing. Fails with "signals are empty" when route_rows does
    not give the router the batch size (the eighteenth lease's Flexi run stopped on it at
    its first step)."""
    import pytest

    from flexispeech.errors import ConfigError
    from flexispeech.lora.router import FixedRouter, ThresholdRouter

    rows = ["a", "b", "c"]
    batch = route_rows(rows, {}, RandomRouter(ranks=(0, 4, 16), seed=1))
    assert sorted(batch.rows) == rows and len(batch.ranks) == 3 and batch.signals == {}
    assert set(batch.ranks.tolist()) <= {0, 4, 16}
    assert route_rows(rows, {}, FixedRouter(16)).ranks.tolist() == [16, 16, 16]
    with pytest.raises(ConfigError, match=r"needs signals \['duration'\]"):
        route_rows(rows, {}, ThresholdRouter(ranks=(2, 8), weights={"duration": 1.0}, thresholds=[2.0]))


def test_prepare_batch_collates_in_rank_order() -> None:
    examples = [
        Example(f"u{i}", f"text {i}", signals={"snr_db": float(r), "other": 1.0})
        for i, r in enumerate([0, 4, 2, 4])
    ]
    seen: list[list[str]] = []

    def collate(exs: list[Example]) -> dict[str, torch.Tensor]:
        seen.append([ex.id for ex in exs])
        return {"row": torch.tensor([int(ex.id[1:]) for ex in exs])}

    batch = prepare_batch(examples, by_snr, collate, rows=[10, 11, 12, 13])
    assert seen == [["u1", "u3", "u2", "u0"]]  # one collate call, on the sorted examples
    assert batch.rows == [11, 13, 12, 10] and batch.ranks.tolist() == [4, 4, 2, 0]
    assert batch.inputs["row"].tolist() == [1, 3, 2, 0] and set(batch.signals) == {"snr_db", "other"}


class RowsSplit(Split):
    """A split of plain rows: an id and a cached snr_db signal per row."""

    def __init__(self, n: int) -> None:
        rows = [{"id": f"u{i}", SIGNAL_PREFIX + "snr_db": float(i % 3)} for i in range(n)]
        super().__init__(Path("rows"), rows, list(rows[0]), "no rows")

    @property
    def durations(self) -> list[float]:
        return [float(i % 4) for i in range(len(self.rows))]

    def record(self, index: int) -> dict:
        return {"id": self.rows[index]["id"]}

    def __getitem__(self, index: int) -> Example:
        return Example(self.rows[index]["id"], "", signals=self.signals(index))


class RowInputs:
    """Training inputs that are the row indices themselves (no model needed)."""

    def collate(self, rows):
        return {"rows": torch.tensor(list(rows))}

    def loss(self, model, inputs):
        raise AssertionError("not called here")


def take(plan: BatchPlan, n: int, num_workers: int = 0) -> list:
    out = []
    for planned in train_loader(plan, RowInputs(), num_workers):
        out.append(planned)
        if len(out) == n:
            return out
    return out


def test_plan_covers_epochs_resumes_and_checkpoints_the_router_state() -> None:
    split = RowsSplit(10)
    sampler = LengthBucketSampler(split.durations, 4, seed=1)  # 3 batches per epoch: 4, 4, 2 rows

    def plan(start=(0, 0), process_index=0, local_size=4):
        return BatchPlan(split, sampler, RandomRouter((0, 2, 4), seed=5), local_size, process_index, start)

    run = take(plan(), 7)
    assert [(p.epoch, p.index) for p in run] == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2), (2, 0)]
    assert [sorted(p.batch.rows) for p in run[:3]] == [sorted(b) for b in sampler.batches(0)]
    for p in run:  # the collated inputs are the planned rows, in the planned (rank) order
        assert p.batch.inputs["rows"].tolist() == p.batch.rows
        assert p.batch.ranks.tolist() == sorted(p.batch.ranks.tolist(), reverse=True)
    # With workers the loader plans ahead: every batch still comes in order, the same.
    with_workers = take(plan(), 7, num_workers=2)
    assert [(p.batch.rows, p.batch.ranks.tolist()) for p in with_workers] == [
        (p.batch.rows, p.batch.ranks.tolist()) for p in run
    ]
    # Resuming after batch (1, 0) with the router state saved with it gives the same later batches.
    resumed = plan(start=(1, 1))
    resumed.router.generator.set_state(run[3].router_state)
    assert [(p.batch.rows, p.batch.ranks.tolist()) for p in take(resumed, 3)] == [
        (p.batch.rows, p.batch.ranks.tolist()) for p in run[4:]
    ]
    # A second process takes the second half of each global batch and skips an empty share.
    second = take(plan(process_index=1, local_size=2), 3)
    assert [(p.epoch, p.index) for p in second] == [(0, 0), (0, 1), (1, 0)]
    assert [set(p.batch.rows) for p in second[:2]] == [set(b[2:4]) for b in sampler.batches(0)[:2]]
    assert [p.n_global for p in second] == [4, 4, 4]
