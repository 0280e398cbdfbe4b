"""How a batch's rows are grouped by rank: the ``RankPlan`` every compute path reads.

A batch has per-row ranks ``ranks`` [N] (int64, on the input's device). The plan groups
them once per forward pass (one host sync, ``make_plan``) and every adapted layer of the
model shares it through its ``RankSlot`` (``RankSlot.plan`` in ``ranks``): the runs of equal-rank rows, the
span of rows with rank > 0, the scaled rank mask. Sorting a batch by rank first
(``rank_sort_order``) makes one run per rank, so the segmented paths use views.

This module also holds the rule by which ``auto`` picks between one masked block and one
block per run (``auto_takes_masked``, ``RankPlan.few_runs``): the delta-only paths
(``deltas``) and the fused paths (``kernels``) apply the same rule.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

# The segmented path launches ~6 small matmuls per run of equal-rank rows; past this many
# runs (an unsorted batch) the launches cost more than the FLOPs they save.
MAX_SEGMENTS = 8
# Below this many token positions in one call (a decoding step: one token per row) a CPU
# matmul costs its launch, not its FLOPs, and the single masked block beats one block per
# run: benchmarks/text_step.py measured segmented decoding steps at 1.1-1.2x static.
MIN_SEGMENTED_TOKENS = 256


def rank_mask(ranks: torch.Tensor, scale_table: torch.Tensor, top: int, dtype: torch.dtype) -> torch.Tensor:
    """``mask[n, j] = scale(r_n) if j < r_n else 0``, [N, top] in ``dtype``.

    Zeroing also stops gradients to the components above r_n, which is what nested-rank
    training needs; carrying the scale in the mask saves a separate multiply.
    """
    cols = torch.arange(top, device=ranks.device)
    return ((cols < ranks[:, None]) * scale_table[ranks][:, None]).to(dtype)


def token_positions(x: torch.Tensor) -> int:
    """Token positions in one call: rows x sequence positions of ``x`` [..., in]."""
    return x.numel() // x.shape[-1]


def auto_takes_masked(device_type: str, tokens: int | None) -> bool:
    """Whether ``auto`` takes the one masked block over per-run blocks for a mixed batch:
    on GPUs, and on CPUs for calls under ``MIN_SEGMENTED_TOKENS`` token positions
    (decoding steps), where launches and memory, not FLOPs, bound these matmuls."""
    return device_type != "cpu" or (tokens is not None and tokens < MIN_SEGMENTED_TOKENS)


def rank_sort_order(ranks: torch.Tensor) -> torch.Tensor:
    """The permutation [N] that sorts a batch by rank, highest first (stable).

    Reordering a batch with it (``inputs[order]``, ``ranks[order]``) before the forward pass
    makes every rank's rows contiguous, so the ``segmented`` path can use views instead of
    gathers in every layer; a token-mean loss does not change under the permutation.
    """
    return torch.sort(ranks, descending=True, stable=True).indices


@dataclass
class RankPlan:
    """How one batch's rows are grouped by rank, shared by every layer of a forward pass.

    ``runs`` are the maximal runs of equal-rank rows ``(start, end, rank)`` in row order;
    ``span`` is ``(first, last + 1)`` of the rows with rank > 0.
    """

    ranks: torch.Tensor
    ranks_list: list[int]
    distinct: list[int]
    runs: list[tuple[int, int, int]]
    span: tuple[int, int]
    masks: dict[Any, torch.Tensor] = field(default_factory=dict)

    @property
    def top(self) -> int:
        return self.distinct[-1]

    @property
    def uniform(self) -> bool:
        return len(self.distinct) == 1

    def nonzero_runs(self) -> list[tuple[int, int, int]]:
        return [run for run in self.runs if run[2] > 0]

    def few_runs(self) -> bool:
        """Whether the rank > 0 rows fall into at most ``MAX_SEGMENTS`` runs (a batch grouped
        by rank): then one block per run beats a gather or a masked block on a CPU."""
        return len(self.nonzero_runs()) <= MAX_SEGMENTS

    def mask(self, scales: list[float], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """The scaled mask of ``rank_mask`` at the top rank, [N, top], cached per dtype/device."""
        key = (dtype, device, tuple(scales))
        if key not in self.masks:
            table = torch.tensor(scales, dtype=torch.float32, device=device)
            self.masks[key] = rank_mask(self.ranks.to(device), table, self.top, dtype)
        return self.masks[key]

    def scale_tensor(self, scales: list[float], device: torch.device) -> torch.Tensor:
        """``scales`` as a float32 tensor on ``device`` [r_max + 1], cached like ``mask``."""
        key = ("scales", device, tuple(scales))
        if key not in self.masks:
            self.masks[key] = torch.tensor(scales, dtype=torch.float32, device=device)
        return self.masks[key]

    def fused_path(self, requested: str, device_type: str = "cpu", tokens: int | None = None) -> str:
        """The fused path for this batch: ``uniform``, ``segmented`` or ``masked``.

        ``auto`` takes ``masked`` on GPUs: at ranks <= 64 the adapter matmuls are bound by
        memory and launches, not FLOPs, and one masked block over the rank > 0 span beat
        the per-run launches of ``segmented`` (benchmarks/NOTES.md). On CPUs, where FLOPs
        dominate, ``segmented`` (cost ∝ Σ r) is taken when the runs are few and the call
        has at least ``MIN_SEGMENTED_TOKENS`` token positions (``tokens``).
        """
        if self.uniform:
            return "uniform"
        if requested == "triton":
            return "triton"
        if requested == "masked" or (requested == "auto" and auto_takes_masked(device_type, tokens)):
            return "masked"
        if requested == "segmented" or self.few_runs():
            return "segmented"
        return "masked"


def make_plan(ranks: torch.Tensor) -> RankPlan:
    """Group ``ranks`` [N] (one host sync)."""
    ranks_list = ranks.tolist()
    runs: list[tuple[int, int, int]] = []
    for i, r in enumerate(ranks_list):
        if runs and runs[-1][2] == r:
            runs[-1] = (runs[-1][0], i + 1, r)
        else:
            runs.append((i, i + 1, r))
    active = [i for i, r in enumerate(ranks_list) if r > 0]
    span = (active[0], active[-1] + 1) if active else (0, 0)
    return RankPlan(ranks, ranks_list, sorted(set(ranks_list)), runs, span)


def expand_ranks(ranks: torch.Tensor, n_rows: int) -> torch.Tensor:
    """``ranks`` [N'] repeated to [n_rows] (each rank ``n_rows // N'`` times; no host sync:
    an integer repeat count is an expand + reshape)."""
    return ranks if ranks.shape[0] == n_rows else ranks.repeat_interleave(n_rows // ranks.shape[0])
