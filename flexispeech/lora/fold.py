"""The folded path: each run of equal-rank rows goes through one linear whose weight has
the update folded in, ``W_r = W + scale(r) * B[:, :r] @ A[:r]``.

For row ``n`` at rank ``r_n`` this is the same function as the other paths
(``base(x[n]) + scale(r_n) * (x[n] @ A[:r_n].T) @ B[:, :r_n].T``), computed another way.
The unmerged paths (``kernels``) read ``x`` again for the shrink and read and write the
whole output again for the expand, and the backward does the same for ``grad_x``: on a GPU
those memory passes, not the rank's FLOPs, set the adapter's cost, which is why a lower
rank did not cost less there (benchmarks/RESULTS.md, "one layer at one rank"). Folding
costs one small GEMM per run instead (``d_out x d_in x r`` multiply-adds and one pass
over a weight-sized tensor, in proportion to the rank), after which the forward and the
input gradient cost what the base layer's do. So it pays when a call has many token
positions (an encoder pass, a training step), not in a decoding step (one token per row),
where the fold would cost more than the update (a CPU training call needs more
positions, ``plans.FOLD_MIN_TRAIN_TOKENS_CPU``: its backward folds again and makes ``h``
again, against unfolded FLOPs a CPU pays at the rank's price); and ``auto``
(``plans.choose_route``) takes it for a batch at one rank only: on an H200, inference at
one rank came to 1.04-1.07x the base model (the unfolded node 1.20-1.33x), while mixed
ranks folded run by run were slower than one masked block (twice the launches of a
host-bound eager step; benchmarks/RESULTS.md, round 6).

The adapter gradients need ``h = x @ A[:r].T``, which the forward no longer makes: the
backward makes it again from the saved ``x`` (rows x positions x r multiply-adds), so
nothing beyond ``x`` is saved, and the folded weights are made again too (no weight-sized
tensors held between forward and backward).

Rows must come in few runs of equal rank (a batch sorted by ``rank_sort_order``); the
runs include rank 0 (the base weight itself). The folded weight is rounded once to the
layer's dtype (``addmm`` accumulates in float32), as a merged checkpoint is. In bf16 that
rounding (a unit in the last place of the base weight) could swallow a small update, but
the unmerged paths round their output, ``base(x) + update``, to the same grid, which loses
as much of it (tests/lora/test_fold.py: on a 256-wide bf16 layer, for updates of about
0.1, 1 and 10 % of the output, the share of the update lost folded stays within 10 % of
the share lost unfolded).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from flexispeech.lora.kernels import first, needs_grad, rank_mm, rows_of, scale_block

Run = tuple[int, int, int]  # (first row, last row + 1, rank)


def fold_weight(
    weight: torch.Tensor, A: torch.Tensor, B: torch.Tensor, rank: int, scale: float
) -> torch.Tensor:
    """``weight + scale * B[:, :rank] @ A[:rank]`` [out, in]; the weight itself at rank 0."""
    if rank == 0:
        return weight
    return torch.addmm(weight, B[:, :rank], A[:rank], alpha=scale)


def folded_forward(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    A: torch.Tensor,
    B: torch.Tensor,
    runs: list[Run],
    scales: list[float],
) -> torch.Tensor:
    """``x`` [N, *, in] through ``W_r`` per run of rows (``runs`` cover rows 0..N-1 in
    order) -> [N, *, out]. One run: one ``F.linear``; several: one GEMM per run, written
    into its rows of the output (no gather, no scatter, no concatenation)."""
    if len(runs) == 1:
        r = runs[0][2]
        return F.linear(x, fold_weight(weight, A, B, r, scales[r]), bias)
    d_in, d_out = x.shape[-1], weight.shape[0]
    out = x.new_empty(*x.shape[:-1], d_out)
    for start, end, r in runs:
        w = fold_weight(weight, A, B, r, scales[r])
        xs, os = rows_of(x, start, end, d_in), rows_of(out, start, end, d_out)
        if bias is None:
            torch.mm(xs, w.T, out=os)
        else:
            torch.addmm(bias, xs, w.T, out=os)
    return out


class _FoldedLinear(torch.autograd.Function):
    """``folded_forward`` as one autograd node; saves ``x`` (and the weights it already
    holds) only.

    Gradients: ``grad_x`` per run through its folded weight (the base layer's cost); the
    adapter gradients as one block over the rows with a rank (``block``: first row, last
    row + 1, top rank), where ``mask`` [end - start, 1, top], the block's rows of the rank
    mask (``RankPlan.span_mask``, made once per batch for every layer), carries each row's
    scale and zeroes the components above its rank, so ``grad_B[:, :top] = g^T (x A^T ⊙
    mask)`` and ``grad_A[:top] = ((g B) ⊙ mask)^T x`` are two large GEMMs however many
    runs there are (per-run GEMMs as narrow as the rank measured slower); ``mask`` None:
    the rows with a rank all have the top rank, and its scale ``scales[top]`` serves.
    Components above a row's rank get nothing from it.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, A, B, mask, runs, scales, block):  # type: ignore[override]
        ctx.runs, ctx.scales, ctx.block, ctx.has_bias = runs, scales, block, bias is not None
        ctx.save_for_backward(x, weight, A, B, mask)
        return folded_forward(x, weight, bias, A, B, runs, scales)

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        x, weight, A, B, mask = ctx.saved_tensors
        need_x, need_w, need_b, need_a, need_bb = ctx.needs_input_grad[:5]
        d_in, d_out = x.shape[-1], weight.shape[0]
        g2 = grad_out.reshape(-1, d_out)
        grad_x = None
        if need_x:
            if len(ctx.runs) == 1:
                r = ctx.runs[0][2]
                grad_x = (g2 @ fold_weight(weight, A, B, r, ctx.scales[r])).view(x.shape)
            else:
                grad_x = x.new_empty(x.shape)
                for start, end, r in ctx.runs:
                    w = fold_weight(weight, A, B, r, ctx.scales[r])
                    torch.mm(rows_of(grad_out, start, end, d_out), w, out=rows_of(grad_x, start, end, d_in))
        grad_a = grad_bb = None
        start, end, top = ctx.block
        r_max = A.shape[0]
        if (need_a or need_bb) and top > 0:
            xs, gs = rows_of(x, start, end, d_in), rows_of(grad_out, start, end, d_out)
            scale = ctx.scales[top] if mask is None else None
            if need_bb:
                # h is made again from x: the node saves x alone
                h = scale_block(xs @ first(A, top, 0).T, start, end, top, scale, mask)
                grad_bb = rank_mm(gs.T, h)
                if top < r_max:
                    grad_bb = F.pad(grad_bb, (0, r_max - top))
            if need_a:
                gh = scale_block(rank_mm(gs, first(B, top, 1)), start, end, top, scale, mask)
                grad_a = gh.T @ xs
                if top < r_max:
                    grad_a = F.pad(grad_a, (0, 0, 0, r_max - top))
        if need_a and grad_a is None:  # every row at rank 0: zero gradients (DDP keeps step)
            grad_a = torch.zeros_like(A)
        if need_bb and grad_bb is None:
            grad_bb = torch.zeros_like(B)
        grad_w = g2.T @ x.reshape(-1, d_in) if need_w else None
        grad_b = g2.sum(0) if (need_b and ctx.has_bias) else None
        return grad_x, grad_w, grad_b, grad_a, grad_bb, None, None, None, None


def adapter_block(runs: list[Run]) -> Run:
    """The rows that carry an adapter gradient, ``(first, last + 1, top rank)`` over the
    runs with a rank > 0; ``(0, 0, 0)`` when every run is at rank 0."""
    active = [run for run in runs if run[2] > 0]
    if not active:
        return (0, 0, 0)
    return (active[0][0], active[-1][1], max(r for _, _, r in active))


def folded_linear(
    x: torch.Tensor,
    base: torch.nn.Linear,
    A: torch.Tensor,
    B: torch.Tensor,
    runs: list[Run],
    scales: list[float],
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """``base(x)`` plus each row's update, folded per run (see the module docstring).

    ``x`` [N, *, in]; ``runs`` ``(start, end, rank)`` cover rows 0..N-1 in order; ``scales[r]``
    is scale(r); ``mask`` [span rows, 1, top] the scaled rank mask of the rows with a rank
    (``RankPlan.span_mask``; the span is ``adapter_block(runs)``), needed for the gradients
    when the rows have more than one rank > 0. Requires
    ``kernels.fused_supported`` (one dtype, eager, no autocast). Without autograd
    (inference) the same ops run without the node.
    """
    if not needs_grad(x, base, A, B):
        return folded_forward(x, base.weight, base.bias, A, B, runs, scales)
    if len({r for _, _, r in runs if r > 0}) <= 1:
        mask = None  # one rank: its scale is a number
    elif mask is None:
        raise ValueError("folded_linear: rows at several ranks need the batch's rank mask")
    return _FoldedLinear.apply(x, base.weight, base.bias, A, B, mask, runs, scales, adapter_block(runs))
