"""Delta-only compute paths for the adapter update of a mixed-rank batch.

All paths compute, for row ``n`` with rank ``r_n``::

    delta[n] = scale(r_n) * (x[n] @ A[:r_n].T) @ B[:, :r_n].T

and return ``None`` (add nothing) when every row has rank 0 (rank 0 is exactly the base
model). Shapes: ``x`` [N, *, in], ``A`` [r_max, in], ``B`` [out, r_max], ``ranks`` [N]
(int64, same device as ``x``), ``scale_table`` [r_max + 1] with ``scale_table[r] =
scale(r)``; deltas are [N, *, out]. They are plain tensor ops, so autograd, autocast and
``torch.compile`` see through them; the layer uses them where the fused paths
(``kernels``) do not apply (dropout in training, autocast, mixed dtypes, compile, or a
layer whose ``fused`` option is off). Which grouping a call takes is decided in one
place, ``plans.choose_route``.

- ``masked``: one pair of matmuls at the batch's top rank with the components above each
  row's rank zeroed (by a mask that also carries the per-row scale). Cost ∝ N · top.
  Shape-static at a fixed top rank, so it is the path used under ``torch.compile``.
- ``grouped``: rows gathered per distinct rank, truncated matmuls per group, results
  scattered back. Cost ∝ Σ r_n (+ a gather/scatter of the rows).
- ``segmented``: when rows of equal rank sit next to each other, truncated matmuls on
  views of each run, joined by one ``cat``. Cost ∝ Σ r_n, no gather or scatter; ``auto``
  takes it on CPUs when the runs are few, and ``masked`` on GPUs.
- ``uniform``: every row has the same rank r: one truncated pair of matmuls.
"""

from __future__ import annotations

import torch

from flexispeech.lora.plans import Grouping, RankPlan, rank_mask


def uniform_delta(
    x: torch.Tensor, A: torch.Tensor, B: torch.Tensor, rank: int, scale: float
) -> torch.Tensor | None:
    """Every row at ``rank``: ``scale * (x @ A[:rank].T) @ B[:, :rank].T`` ([N, *, out])."""
    if rank == 0:
        return None
    return (x @ A[:rank].T * scale) @ B[:, :rank].T


def masked_delta(
    x: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    ranks: torch.Tensor,
    scale_table: torch.Tensor,
    top: int | None = None,
    mask: torch.Tensor | None = None,
) -> torch.Tensor | None:
    """Masked path at rank ``top`` (default: A's full r_max), as described above;
    ``mask`` [N, top] is the batch's ``rank_mask`` when the caller has it cached."""
    top = A.shape[0] if top is None else top
    if top == 0:
        return None
    h = x @ A[:top].T  # [N, *, top]
    if mask is None:
        mask = rank_mask(ranks, scale_table.to(x.device), top, h.dtype)
    mask = mask.view(mask.shape[0], *([1] * (x.dim() - 2)), top)
    return (h * mask) @ B[:, :top].T


def grouped_delta(
    x: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    ranks: torch.Tensor,
    scales: list[float],
    distinct: list[int],
) -> torch.Tensor | None:
    """Grouped path: truncated matmuls per distinct rank in ``distinct`` (sorted, no 0s
    needed); ``scales[r]`` is scale(r) as a Python float."""
    out: torch.Tensor | None = None
    for r in distinct:
        if r == 0:
            continue
        idx = (ranks == r).nonzero().squeeze(1)
        part = (x.index_select(0, idx) @ A[:r].T * scales[r]) @ B[:, :r].T
        if out is None:
            out = torch.zeros(*x.shape[:-1], B.shape[0], dtype=part.dtype, device=part.device)
        # index_add (not in place) keeps autograd simple; rows of other ranks stay zero.
        out = out.index_add(0, idx, part)
    return out


def segmented_delta(
    x: torch.Tensor, A: torch.Tensor, B: torch.Tensor, runs: list[tuple[int, int, int]], scales: list[float]
) -> torch.Tensor | None:
    """Segmented path of the delta-only paths: truncated matmuls per run ``(start, end, r)``
    of equal-rank rows, on views of ``x`` (no gather, no scatter), joined by one ``cat``;
    rank-0 runs add zeros. None when every run is at rank 0."""
    parts: dict[int, torch.Tensor] = {}
    for i, (start, end, r) in enumerate(runs):
        if r:
            parts[i] = (x[start:end] @ A[:r].T * scales[r]) @ B[:, :r].T
    if not parts:
        return None
    like = next(iter(parts.values()))
    pieces = [
        parts[i] if i in parts else like.new_zeros((end - start, *like.shape[1:]))
        for i, (start, end, _) in enumerate(runs)
    ]
    return pieces[0] if len(pieces) == 1 else torch.cat(pieces)


def lora_delta(
    x: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    ranks: torch.Tensor,
    scale_table: torch.Tensor,
    scales: list[float],
    grouping: Grouping,
    plan: RankPlan | None = None,
    rank: int | None = None,
) -> torch.Tensor | None:
    """The adapter update of a mixed-rank batch grouped as ``grouping`` (the layer's
    ``plans.choose_route`` decided it). ``static`` is the masked path at the full r_max
    (no plan, no host sync, shape-static: CUDA graphs and ``torch.compile``); the others
    read ``plan``; ``uniform`` without a plan runs every row at ``rank``."""
    if grouping == "static":
        return masked_delta(x, A, B, ranks, scale_table)
    if grouping == "uniform":
        r = plan.top if plan is not None else rank
        return uniform_delta(x, A, B, r, scales[r])
    if plan is None:
        raise ValueError(f"the {grouping} path needs the batch's RankPlan")
    if grouping == "segmented":
        return segmented_delta(x, A, B, plan.runs, scales)
    if grouping == "grouped":
        return grouped_delta(x, A, B, ranks, scales, plan.distinct)
    if plan.top == 0:
        return None
    # The mask of the batch is built once and shared by every layer (RankPlan.mask).
    mask = plan.mask(scales, x.dtype if x.dtype == A.dtype else torch.result_type(x, A), x.device)
    return masked_delta(x, A, B, ranks, scale_table, top=plan.top, mask=mask)
