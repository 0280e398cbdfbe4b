"""The batch step of training, evaluation and streaming: rows -> signals -> ranks -> rank order -> inputs.

A batch's signals are stacked once (from a split's cached columns, or from the Examples),
the router gives one rank per row, and the rows are put in rank order (highest first,
stable: ``rank_sort_order``) *before* the model inputs are collated, so every tensor of a
batch is in one order and the CPU's segmented path runs one truncated matmul per rank.
Rows decode independently and a token-mean loss does not depend on row order, so the
order changes speed only; ``Batch.unsort`` puts per-row outputs back in the caller's order.

Training feeds its batches through a ``DataLoader`` with ``TrainConfig.num_workers``
workers. The *plan* of a batch (which rows, their ranks, their order) is made in the
training process in step order, because a random router draws from a generator whose
state goes into checkpoints; the workers only collate (decode audio, extract features).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Generic, TypeVar

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from flexispeech.data.speech import LengthBucketSampler
from flexispeech.data.split import Split, signals_tensor
from flexispeech.lora.plans import rank_sort_order
from flexispeech.lora.router import RandomRouter
from flexispeech.models.family import Example, TrainInputs

K = TypeVar("K")
T = TypeVar("T")
RouterFn = Callable[[dict[str, torch.Tensor], int], torch.Tensor]
"""A router: signals name -> [B] and the batch size B to ranks [B] (a
``flexispeech.lora.router.Router``; B alone serves a router that reads no signal)."""


@dataclass
class Batch(Generic[K]):
    """One batch after routing, every field in rank-sorted order."""

    rows: list[K]
    """The caller's handles of the rows (split indices, Examples, stream ids)."""
    signals: dict[str, torch.Tensor]
    """name -> [B] float32: what the rows were routed on."""
    ranks: torch.Tensor | None
    """[B] long, highest first; None when there is no router (the caller's order is kept)."""
    order: torch.Tensor
    """[B] long: sorted position ``j`` holds the caller's row ``order[j]``."""
    inputs: dict[str, torch.Tensor] = field(default_factory=dict)
    """The collated model inputs (first dim B); empty until collated."""

    @property
    def inverse(self) -> torch.Tensor:
        """[B] long: the caller's row ``i`` sits at sorted position ``inverse[i]``."""
        return torch.argsort(self.order)

    def unsort(self, values: Sequence[T]) -> list[T]:
        """Per-row ``values`` given in this batch's order, back in the caller's order."""
        return [values[j] for j in self.inverse.tolist()]


def route_rows(rows: Sequence[K], signals: dict[str, torch.Tensor], router: RouterFn | None) -> Batch[K]:
    """Rank and order ``rows`` by ``router`` on their ``signals`` (name -> [len(rows)])."""
    if router is None:
        return Batch(list(rows), dict(signals), None, torch.arange(len(rows)))
    # The batch size goes beside the signals: rows of a corpus whose signals are not cached
    # yet have none (the recipe trains runs whose router reads none, random or fixed, while
    # ``flexispeech signals`` runs beside them); a router that reads signals names the missing.
    ranks = router(signals, len(rows))
    order = rank_sort_order(ranks)
    return Batch(
        [rows[j] for j in order.tolist()], {k: v[order] for k, v in signals.items()}, ranks[order], order
    )


def prepare_batch(
    examples: Sequence[Example],
    router: RouterFn | None,
    collate: Callable[[list[Example]], dict[str, torch.Tensor]],
    rows: Sequence[K] | None = None,
) -> Batch[Any]:
    """Examples -> signals (stacked once) -> ranks -> rank order -> ``collate`` of the
    sorted Examples (e.g. ``family.collate`` with its processor).

    ``rows`` are the caller's handles of the examples (default: the examples themselves).
    """
    routed = route_rows(range(len(examples)), signals_tensor(examples), router)
    handles = list(examples) if rows is None else list(rows)
    order = routed.order.tolist()
    return replace(routed, rows=[handles[j] for j in order], inputs=collate([examples[j] for j in order]))


@dataclass
class PlannedBatch:
    """One training micro-batch: this process's share of a global batch, routed."""

    batch: Batch[int]
    """Split row indices, rank-sorted; ``inputs`` filled by the loader."""
    epoch: int
    index: int
    """The global batch's number in its epoch (resuming starts after it)."""
    n_global: int
    """Examples in the global batch, every process's share together."""
    router_state: torch.Tensor | None
    """A random router's generator state right after routing this batch (for checkpoints:
    the loader routes batches ahead of the step that trains on them)."""


class BatchPlan(Sampler[PlannedBatch]):
    """Training batches in step order from ``(epoch, batch_in_epoch)`` on, without end.

    Each global batch of ``sampler`` is cut to this process's ``local_size`` rows and routed
    on the rows' cached signals; an empty share (the last, short batch of an epoch) is
    skipped. Runs in the training process (DataLoader samplers do).
    """

    def __init__(
        self,
        split: Split,
        sampler: LengthBucketSampler,
        router: RouterFn,
        local_size: int,
        process_index: int = 0,
        start: tuple[int, int] = (0, 0),
    ) -> None:
        self.split, self.sampler, self.router = split, sampler, router
        self.local_size, self.process_index, self.start = local_size, process_index, start

    def __iter__(self) -> Iterator[PlannedBatch]:
        epoch, first = self.start
        while True:
            batches = self.sampler.batches(epoch)
            for index in range(first, len(batches)):
                start = self.process_index * self.local_size
                rows = batches[index][start : start + self.local_size]
                if not rows:
                    continue
                routed = route_rows(rows, self.split.signals_of(rows), self.router)
                state = self.router.generator.get_state() if isinstance(self.router, RandomRouter) else None
                yield PlannedBatch(routed, epoch, index, len(batches[index]), state)
            epoch, first = epoch + 1, 0


class _Collated(Dataset):
    """The loader's dataset: a planned batch in, the same batch with its inputs out."""

    def __init__(self, inputs: TrainInputs) -> None:
        self.inputs = inputs

    def __getitem__(self, planned: PlannedBatch) -> PlannedBatch:  # type: ignore[override]
        return replace(planned, batch=replace(planned.batch, inputs=self.inputs.collate(planned.batch.rows)))


def _as_is(planned: PlannedBatch) -> PlannedBatch:
    return planned


def train_loader(plan: BatchPlan, inputs: TrainInputs, num_workers: int = 0) -> DataLoader:
    """The DataLoader of ``plan``: its batches in order, collated by ``inputs`` in
    ``num_workers`` worker processes (0: in the training process)."""
    # The loader seeds its workers from this generator, not from the global RNG, which
    # dropout draws from and checkpoints save: with or without workers, from scratch or
    # resumed, training then draws the same dropout masks.
    return DataLoader(
        _Collated(inputs),
        batch_size=None,
        sampler=plan,
        collate_fn=_as_is,
        num_workers=num_workers,
        generator=torch.Generator().manual_seed(0),
    )
