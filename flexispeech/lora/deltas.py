"""Delta-only compute paths for the adapter update of a mixed-rank batch.

All paths compute, for row ``n`` with rank ``r_n``::

    delta[n] = scale(r_n) * (x[n] @ A[:r_n].T) @ B[:, :r_n].T

and return ``None`` (add nothing) when every row has rank 0 (rank 0 is exactly the base
model). Shapes: ``x`` [N, *, in], ``A`` [r_max, in], ``B`` [out, r_max], ``ranks`` [N]
(int64, same device as ``x``), ``scale_table`` [r_max + 1] with ``scale_table[r] =
scale(r)``; deltas are [N, *, out]. They are plain tensor ops, so autograd, autocast and
``torch.compile`` see through them; the layer uses them where the fused paths
(``kernels``) do not apply (dropout in training, autocast, mixed dtypes, compile).

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

from typing import Literal

import torch

from flexispeech.lora.plans import RankPlan, auto_takes_masked, make_plan, rank_mask, token_positions

Path = Literal["auto", "masked", "grouped", "segmented", "triton"]

# The grouped path pays a gather and a scatter of its rows; it wins when the masked path
# would waste more than this fraction of its FLOPs on components above the rows' ranks.
GROUPED_MIN_SAVING = 0.35


def uniform_delta(x: torch.Tensor, A: torch.Tensor, B: torch.Tensor, rank: int, scale: float) -> torch.Tensor | None:
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
) -> torch.Tensor | None:
    """Masked path at rank ``top`` (default: A's full r_max), as described above."""
    top = A.shape[0] if top is None else top
    if top == 0:
        return None
    h = x @ A[:top].T  # [N, *, top]
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
    pieces = [parts[i] if i in parts else like.new_zeros((end - start, *like.shape[1:])) for i, (start, end, _) in enumerate(runs)]
    return pieces[0] if len(pieces) == 1 else torch.cat(pieces)


def choose_path(ranks_list: list[int]) -> tuple[str, list[int]]:
    """Pick ``uniform``, ``masked`` or ``grouped`` for one call from its per-row ranks
    (the delta-only paths, for rows in any order). Returns the path and the sorted
    distinct ranks."""
    distinct = sorted(set(ranks_list))
    if len(distinct) == 1:
        return "uniform", distinct
    top = distinct[-1]
    masked_cost = top * len(ranks_list)
    grouped_cost = sum(ranks_list)
    if grouped_cost <= (1.0 - GROUPED_MIN_SAVING) * masked_cost:
        return "grouped", distinct
    return "masked", distinct


def lora_delta(
    x: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    ranks: torch.Tensor,
    scale_table: torch.Tensor,
    scales: list[float],
    path: Path = "auto",
    plan: RankPlan | None = None,
) -> torch.Tensor | None:
    """The adapter update of a mixed-rank batch by the requested delta-only path.

    Under ``torch.compile`` the masked path at the full r_max is always used: it has no
    data-dependent shapes, so it compiles without graph breaks.
    """
    if torch.compiler.is_compiling():
        return masked_delta(x, A, B, ranks, scale_table)
    plan = plan if plan is not None else make_plan(ranks)
    chosen, distinct = choose_path(plan.ranks_list)
    if chosen != "uniform":
        if path == "masked" or (path == "auto" and auto_takes_masked(x.device.type, token_positions(x))):
            chosen = "masked"
        elif path == "segmented" or (path == "auto" and plan.few_runs()):
            chosen = "segmented"  # CPUs, rows grouped by rank: views, no gather or scatter
        elif path == "grouped":
            chosen = "grouped"
    if chosen == "uniform":
        return uniform_delta(x, A, B, distinct[0], scales[distinct[0]])
    if chosen == "segmented":
        return segmented_delta(x, A, B, plan.runs, scales)
    if chosen == "grouped":
        return grouped_delta(x, A, B, ranks, scales, distinct)
    return masked_delta(x, A, B, ranks, scale_table, top=distinct[-1])
