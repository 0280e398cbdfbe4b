"""Compute paths for the adapter update of a batch whose rows have different ranks.

All paths compute, for row ``n`` with rank ``r_n``::

    delta[n] = scale(r_n) * (x[n] @ A[:r_n].T) @ B[:, :r_n].T

and return ``None`` when every row has rank 0 (the caller then adds nothing, so rank 0
is exactly the base model). Shapes: ``x`` [N, *, in], ``A`` [r_max, in], ``B`` [out, r_max],
``ranks`` [N] (int64, same device as ``x``), ``scale_table`` [r_max + 1] with
``scale_table[r] = scale(r)``; the result is [N, *, out].

- ``masked``: one pair of matmuls at the batch's top rank with the components above each
  row's rank zeroed (by a mask that also carries the per-row scale). Cost ∝ N · top.
  Shape-static at a fixed top rank, so it is the path used under ``torch.compile``.
- ``grouped``: rows gathered per distinct rank, truncated matmuls per group, results
  scattered back. Cost ∝ Σ r_n (+ a gather/scatter of the rows): a lower rank really
  costs fewer FLOPs, and rank-0 rows cost nothing.
- ``uniform``: every row has the same rank r: one truncated pair of matmuls.
"""

from __future__ import annotations

from typing import Literal

import torch

Path = Literal["auto", "masked", "grouped"]

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
    cols = torch.arange(top, device=x.device)
    # mask[n, j] = scale(r_n) if j < r_n else 0: zeroing also stops gradients to the
    # components above r_n, which is what nested-rank training needs.
    mask = (cols < ranks[:, None]).to(h.dtype) * scale_table[ranks][:, None].to(h.dtype)
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


def choose_path(ranks_list: list[int]) -> tuple[str, list[int]]:
    """Pick ``uniform``, ``masked`` or ``grouped`` for one call from its per-row ranks.

    Returns the path and the sorted distinct ranks.
    """
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
) -> torch.Tensor | None:
    """The adapter update of a mixed-rank batch by the requested path.

    Under ``torch.compile`` the masked path at the full r_max is always used: it has no
    data-dependent shapes, so it compiles without graph breaks.
    """
    if torch.compiler.is_compiling():
        return masked_delta(x, A, B, ranks, scale_table)
    ranks_list = ranks.tolist()
    chosen, distinct = choose_path(ranks_list)
    if path == "masked":
        chosen = "uniform" if chosen == "uniform" else "masked"
    elif path == "grouped" and chosen != "uniform":
        chosen = "grouped"
    if chosen == "uniform":
        return uniform_delta(x, A, B, distinct[0], scales[distinct[0]])
    if chosen == "grouped":
        return grouped_delta(x, A, B, ranks, scales, distinct)
    return masked_delta(x, A, B, ranks, scale_table, top=distinct[-1])
