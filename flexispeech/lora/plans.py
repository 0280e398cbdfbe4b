"""How a batch's rows are grouped by rank: the ``RankPlan`` every compute path reads.

A batch has per-row ranks ``ranks`` [N] (int64, on the input's device). The plan groups
them once per forward pass (one host sync, ``make_plan``) and every adapted layer of the
model shares it through its ``RankSlot`` (``RankSlot.plan`` in ``ranks``): the runs of equal-rank rows, the
span of rows with rank > 0, the scaled rank mask. Sorting a batch by rank first
(``rank_sort_order``) makes one run per rank, so the segmented paths use views.

``choose_route`` is the one function that decides how a layer computes a call: which
kernel (``Route.kernel``) and how it groups the rows (``Route.grouping``); the layer only
dispatches, ``kernels`` and ``deltas`` only compute what they are told.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from flexispeech.host_copy import to_device

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


def block_mask(mask: torch.Tensor, start: int, end: int) -> torch.Tensor:
    """Rows ``start:end`` of a rank mask [N, top] as [end - start, 1, top]: the shape the
    fused node multiplies a block's ``x @ A^T`` by, made once per call (or, for a batch's
    span, once per batch: ``RankPlan.span_mask``) and read by the forward and the backward
    (fewer tensor ops per layer: the eager step is bound by host work per op on GPUs,
    benchmarks/RESULTS.md)."""
    return mask[start:end, None, :]


def token_positions(x: torch.Tensor) -> int:
    """Token positions in one call: rows x sequence positions of ``x`` [..., in]."""
    return x.numel() // x.shape[-1]


def auto_takes_masked(device_type: str, tokens: int | None) -> bool:
    """Whether ``auto`` takes the one masked block over per-run blocks for a mixed batch:
    on GPUs, and on CPUs for calls under ``MIN_SEGMENTED_TOKENS`` token positions
    (decoding steps), where launches and memory, not FLOPs, bound these matmuls."""
    return device_type != "cpu" or (tokens is not None and tokens < MIN_SEGMENTED_TOKENS)


# The folded path (``fold``) costs one fold of the weight per run of equal-rank rows (a
# weight-sized pass, d_out x d_in x r multiply-adds) and saves, per token position, the
# update's extra passes over the input and the output (forward) and over the gradients
# (backward). ``auto`` folds a batch at one rank (one run) with at least this many token
# positions: an encoder pass or a training step, never a decoding step. A batch of mixed
# ranks is not folded by ``auto``: one GEMM and one fold per run measured slower than the
# one masked block on an H200 (less GPU work, twice the launches of an eager step that the
# host bounds; benchmarks/RESULTS.md, round 6); a ``fold`` request still folds it.
FOLD_MIN_TOKENS = 512
# A CPU call that needs gradients (a training step) folds from twice as many positions. In
# training the fold is made twice (forward and backward) and ``x A^T`` again in the
# backward, against the unfolded node's expand and its input-gradient update; on a CPU,
# where the unfolded update costs its FLOPs, that trade pays later. One layer of Whisper
# tiny's (384 -> 384, 384 -> 1536, 1536 -> 384), 2 cores, float32, forward + backward with
# the base frozen, folded over unfolded at ranks 4, 16 and 64 (benchmarks/RESULTS.md, "CPU:
# a lower rank costs less in eager training"): at 512 positions folding cost more
# (medians 1.05-1.09x in three runs, up to 1.27x), at 640 and 800 about the same (medians
# 0.96-0.99x, single layers 0.86-1.08x), from 1,024 to 2,048 a few percent less (medians
# 0.91-0.99x, single layers 0.87-1.05x). No rank trend: the folded cost follows the rank
# as the unfolded one does. Inference folds from ``FOLD_MIN_TOKENS`` on a CPU as before
# (one fold, no backward: folded at or below unfolded in 34 of 36 layers, lengths and
# ranks measured), and GPUs fold in training as before (H200, round 9: all r=64 1.23x the
# floor folded against 1.28x unfolded; not measured again).
FOLD_MIN_TRAIN_TOKENS_CPU = 2 * FOLD_MIN_TOKENS


def fold_pays(plan: RankPlan | None, tokens: int, *, device_type: str, needs_grad: bool) -> bool:
    """Whether ``auto`` folds a call of ``tokens`` positions: every row at one rank (or no
    plan: the default rank) and at least ``FOLD_MIN_TOKENS`` positions, or
    ``FOLD_MIN_TRAIN_TOKENS_CPU`` for a CPU call that needs gradients (``needs_grad``:
    autograd records it)."""
    least = FOLD_MIN_TRAIN_TOKENS_CPU if needs_grad and device_type == "cpu" else FOLD_MIN_TOKENS
    return (plan is None or plan.uniform) and tokens >= least


# The plain grouped path pays a gather and a scatter of its rows; ``auto`` takes it (CPU,
# rows not grouped by rank) when the masked block would waste more than this fraction of
# its FLOPs on components above the rows' ranks.
GROUPED_MIN_SAVING = 0.35


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
            # host values through pinned memory: a plain copy would wait for the queued work
            table = to_device(torch.tensor(scales, dtype=torch.float32), device)
            self.masks[key] = rank_mask(to_device(self.ranks, device), table, self.top, dtype)
        return self.masks[key]

    def span_mask(self, scales: list[float], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """``mask`` over the rows of ``span`` as [span rows, 1, top]: the masked block's
        per-row scales in the shape the fused node multiplies by, made once per batch and
        shared by every layer (one tensor op fewer per layer call)."""
        key = ("span", dtype, device, tuple(scales))
        if key not in self.masks:
            self.masks[key] = block_mask(self.mask(scales, dtype, device), *self.span)
        return self.masks[key]

    def scale_tensor(self, scales: list[float], device: torch.device) -> torch.Tensor:
        """``scales`` as a float32 tensor on ``device`` [r_max + 1], cached like ``mask``."""
        key = ("scales", device, tuple(scales))
        if key not in self.masks:
            self.masks[key] = to_device(torch.tensor(scales, dtype=torch.float32), device)
        return self.masks[key]


def make_plan(ranks: torch.Tensor, values: list[int] | None = None) -> RankPlan:
    """Group ``ranks`` [N]; ``values`` are the same ranks on the host when the caller knows
    them (``use_ranks`` does), else they are read back (one host sync)."""
    ranks_list = ranks.tolist() if values is None else values
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


Kernel = Literal["merged", "fold", "fused", "triton", "plain", "compiled"]
Grouping = Literal["uniform", "masked", "segmented", "grouped", "static"]


@dataclass(frozen=True)
class Route:
    """How one call of a layer is computed (``choose_route``).

    ``kernel``: ``merged`` (one linear with the merged weight), ``fold`` (one linear per
    run of equal-rank rows with the update folded into its weight, ``fold.py``; grouping
    ``uniform`` or ``segmented``: the runs cover every row), ``fused`` (base + adapter
    in one torch autograd node, ``kernels._FlexiLinear``), ``triton`` (the same node with
    the Triton shrink/expand), ``plain`` (base, then the delta by plain tensor ops:
    dropout, autocast, mixed dtypes, or ``fused=False``), ``compiled`` (plain ops at
    r_max, shape-static: under ``torch.compile``). ``grouping``: ``uniform`` (one rank),
    ``masked`` (one block at the batch's top rank), ``segmented`` (one block per run of
    equal-rank rows), ``grouped`` (gather per rank, plain only) or ``static`` (r_max with
    the ranks read on the device: no plan, no host sync, CUDA-graph safe).
    """

    kernel: Kernel
    grouping: Grouping


def choose_route(
    requested: str,
    plan: RankPlan | None,
    *,
    device_type: str,
    tokens: int,
    fusable: bool,
    triton_ok: bool,
    needs_grad: bool,
    merged_rank: int | None = None,
    default_rank: int | None = None,
    compiling: bool = False,
) -> Route:
    """The one decision of how a layer computes a call.

    Args:
        requested: the layer's ``compute_path`` (``auto``, ``masked``, ``grouped``,
            ``segmented``, ``fold``, ``triton`` or ``static``).
        plan: the batch's ``RankPlan``; None: every row at ``default_rank``.
        device_type, tokens: where the call runs and its token positions (rows x positions).
        fusable: the fused node applies (no active dropout, one dtype, no autocast, and the
            layer's ``fused`` option on).
        triton_ok: the Triton kernels can serve the input (CUDA, bf16/fp16, installed).
        needs_grad: autograd records the call (grad mode on and the input, the base weight
            or the adapter requires a gradient): a training step.
        merged_rank: the rank of a ``merge_for_inference`` copy, if any.
        compiling: inside ``torch.compile`` (shape-static plain ops only).

    Rules: under compile, plain ops at r_max; ``static``: r_max with device-side ranks;
    a batch all at the merged rank takes the merged weight; a fusable call of a batch at
    one rank with enough token positions (``fold_pays``: more for a CPU call that needs
    gradients), or a ``fold`` request, is folded; a uniform batch otherwise one block at
    its rank; otherwise ``auto`` takes one masked block on GPUs (the adapter's matmuls
    are bound by memory there, not FLOPs) and, on CPUs, one block per run of a
    rank-sorted batch (cost follows Σ r) except in decoding steps
    (``MIN_SEGMENTED_TOKENS``).
    Grouping by gather (``grouped``) is only a plain path; the fused node serves a
    grouped request on a sorted batch by its runs. The Triton kernels serve ``masked``
    and ``uniform`` blocks of ``triton`` requests, and the ``static`` path.
    """
    if compiling:
        return Route("compiled", "static")
    if requested == "static":
        return Route(("triton" if triton_ok else "fused") if fusable else "plain", "static")
    distinct = [default_rank] if plan is None else plan.distinct
    if merged_rank is not None and distinct == [merged_rank]:
        return Route("merged", "uniform")
    if fusable and (
        requested == "fold"
        or (requested == "auto" and fold_pays(plan, tokens, device_type=device_type, needs_grad=needs_grad))
    ):
        return Route("fold", "uniform" if len(distinct) == 1 else "segmented")
    if requested == "fold":
        requested = "segmented"  # not fusable: the plain ops by runs
    grouping: Grouping
    if len(distinct) == 1:
        grouping = "uniform"
    elif requested in ("masked", "triton"):
        grouping = "masked"
    elif requested == "segmented":
        grouping = "segmented"
    elif requested == "grouped":
        grouping = "segmented" if fusable and plan is not None and plan.few_runs() else "grouped"
    elif auto_takes_masked(device_type, tokens):
        grouping = "masked"
    elif plan is not None and plan.few_runs():
        grouping = "segmented"  # CPUs, rows grouped by rank: views, no gather or scatter
    elif (
        not fusable
        and plan is not None
        and sum(plan.ranks_list) <= (1.0 - GROUPED_MIN_SAVING) * plan.top * len(plan.ranks_list)
    ):
        grouping = "grouped"
    else:
        grouping = "masked"
    if not fusable:
        return Route("plain", grouping)
    if grouping == "grouped":
        return Route("plain", grouping)
    # Eager ``auto`` keeps the torch node on GPUs too. Two side-by-side H200 runs (Whisper
    # small, batch 32; benchmarks/NOTES.md, round 4) did not separate the eager nodes
    # (mixed sorted: torch 1.30x / 1.64x the floor, Triton 1.39x / 1.40x: host-bound
    # noise), and the torch node truncates a uniform batch to its rank (Triton's all r=4
    # was 1.83x against torch's 1.42x in the first run). The Triton kernels serve the
    # ``static`` path (CUDA graphs), where the GPU, not the host, sets the time.
    if triton_ok and requested == "triton" and grouping in ("masked", "uniform") and max(distinct) > 0:
        return Route("triton", grouping)
    return Route("fused", grouping)
