"""Triton kernels for the mixed-rank adapter: a masked shrink and an in-place expand.

Imported lazily (``kernels.triton_usable``) and only for CUDA tensors: importing
flexispeech never needs Triton. In the spirit of Punica's SGMV / S-LoRA's shrink-expand
kernels, but with a per-row rank instead of a per-row adapter:

- ``shrink``: ``h[m, j] = scale(r_m) * (x[m] @ A[j])`` for ``j < r_m``, else 0; [M, R].
  The mask and scale are applied in the epilogue (no separate [M, R] pass), and a block
  of rows whose ranks are all 0 reads nothing of ``x`` (it only writes zeros).
- ``expand_``: ``y[m] += h[m] @ Bm[:, :R].T`` in place, looping over the rank only up
  to the block's largest rank (FLOPs follow the ranks), and skipping all-rank-0 blocks
  entirely (neither read nor write ``y``): rank-0 rows stay exactly the base output.

Row ``m`` of a flattened [M, d] activation belongs to batch row ``m // rows_per_rank``
(the rank tensor is per utterance; the tokens of one utterance share it). The backward
reuses the same two kernels (``gh = mask * (g @ B)`` is a shrink with B^T in A's role,
``grad_x += gh @ A`` an expand) plus two cuBLAS matmuls on the small ``h`` / ``gh``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

# Fixed tile shapes (no autotune: tuning runs cost seconds per shape on first use). Both
# kernels are memory-bound at R <= 64: tiles only need to be large enough for wide loads.
SHRINK_BLOCK_M, SHRINK_BLOCK_K = 64, 64
EXPAND_BLOCK_M, EXPAND_BLOCK_N, EXPAND_BLOCK_R = 64, 128, 16


@triton.jit
def _shrink_kernel(
    x_ptr,
    a_ptr,
    h_ptr,
    rank_ptr,
    scale_ptr,
    M,
    K,
    n_r,
    rows_per_rank,
    stride_xm,
    stride_xk,
    stride_ar,
    stride_ak,
    stride_hm,
    R: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    pid = tl.program_id(0)
    offs_m = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    m_ok = offs_m < M
    rank = tl.load(rank_ptr + offs_m // rows_per_rank, mask=m_ok, other=0).to(tl.int32)
    offs_r = tl.arange(0, R)
    h_ptrs = h_ptr + offs_m[:, None] * stride_hm + offs_r[None, :]
    if tl.max(rank, axis=0) > 0:
        acc = tl.zeros((BLOCK_M, R), dtype=tl.float32)
        offs_k = tl.arange(0, BLOCK_K)
        for k0 in range(0, K, BLOCK_K):
            k = k0 + offs_k
            xt = tl.load(
                x_ptr + offs_m[:, None] * stride_xm + k[None, :] * stride_xk,
                mask=m_ok[:, None] & (k[None, :] < K),
                other=0.0,
            )
            at = tl.load(
                a_ptr + offs_r[None, :] * stride_ar + k[:, None] * stride_ak,
                mask=(k[:, None] < K) & (offs_r[None, :] < n_r),
                other=0.0,
            )
            acc = tl.dot(xt, at, acc)
        scale = tl.load(scale_ptr + rank, mask=m_ok, other=0.0)
        acc = tl.where(offs_r[None, :] < rank[:, None], acc * scale[:, None], 0.0)
        tl.store(h_ptrs, acc.to(h_ptr.dtype.element_ty), mask=m_ok[:, None])
    else:
        tl.store(h_ptrs, tl.zeros((BLOCK_M, R), dtype=h_ptr.dtype.element_ty), mask=m_ok[:, None])


@triton.jit
def _expand_kernel(
    h_ptr,
    b_ptr,
    y_ptr,
    rank_ptr,
    M,
    N,
    n_r,
    rows_per_rank,
    stride_hm,
    stride_bn,
    stride_br,
    stride_ym,
    stride_yn,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_R: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok = offs_m < M
    n_ok = offs_n < N
    rank = tl.load(rank_ptr + offs_m // rows_per_rank, mask=m_ok, other=0).to(tl.int32)
    top = tl.minimum(tl.max(rank, axis=0), n_r)
    if top > 0:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        offs_r = tl.arange(0, BLOCK_R)
        # h is zero above each row's rank, so stopping at the block's top rank is exact.
        for r0 in range(0, top, BLOCK_R):
            r = r0 + offs_r
            ht = tl.load(
                h_ptr + offs_m[:, None] * stride_hm + r[None, :],
                mask=m_ok[:, None] & (r[None, :] < n_r),
                other=0.0,
            )
            bt = tl.load(
                b_ptr + offs_n[None, :] * stride_bn + r[:, None] * stride_br,
                mask=n_ok[None, :] & (r[:, None] < n_r),
                other=0.0,
            )
            acc = tl.dot(ht, bt, acc)
        y_ptrs = y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :] * stride_yn
        ok = m_ok[:, None] & n_ok[None, :]
        y = tl.load(y_ptrs, mask=ok, other=0.0)
        tl.store(y_ptrs, (y.to(tl.float32) + acc).to(y_ptr.dtype.element_ty), mask=ok)


def padded_rank(top: int) -> int:
    """The power of two >= max(top, 16) that the shrink's tiles use (tl.dot needs >= 16)."""
    return max(16, triton.next_power_of_2(top))


def shrink(
    x2: torch.Tensor,
    a_rows: torch.Tensor,
    ranks: torch.Tensor,
    scale_table: torch.Tensor,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """``h`` [M, R] (R = ``padded_rank``): the masked, scaled ``x2 @ a_rows.T``.

    ``x2`` [M, K]; ``a_rows`` [n_r, K] (any strides: ``A[:top]`` or ``B[:, :top].T``);
    ``ranks`` [M // rows_per_rank] on the device; ``scale_table`` [r_max + 1] float32.
    Columns at or above a row's rank (and all columns >= n_r) are written as 0.
    """
    M, K = x2.shape
    n_r = a_rows.shape[0]
    R = padded_rank(n_r)
    h = torch.empty(M, R, dtype=x2.dtype, device=x2.device) if out is None else out
    grid = (triton.cdiv(M, SHRINK_BLOCK_M),)
    _shrink_kernel[grid](
        x2,
        a_rows,
        h,
        ranks,
        scale_table,
        M,
        K,
        n_r,
        M // ranks.shape[0],
        x2.stride(0),
        x2.stride(1),
        a_rows.stride(0),
        a_rows.stride(1),
        h.stride(0),
        R=R,
        BLOCK_M=SHRINK_BLOCK_M,
        BLOCK_K=SHRINK_BLOCK_K,
    )
    return h


def expand_(y2: torch.Tensor, h: torch.Tensor, b_cols: torch.Tensor, ranks: torch.Tensor) -> None:
    """``y2 += h[:, :n_r] @ b_cols.T`` in place; ``y2`` [M, N], ``h`` [M, >= n_r] (zero
    above each row's rank), ``b_cols`` [N, n_r] (any strides). Blocks of rank-0 rows
    are not touched."""
    M, N = y2.shape
    n_r = b_cols.shape[1]
    grid = (triton.cdiv(M, EXPAND_BLOCK_M), triton.cdiv(N, EXPAND_BLOCK_N))
    _expand_kernel[grid](
        h,
        b_cols,
        y2,
        ranks,
        M,
        N,
        n_r,
        M // ranks.shape[0],
        h.stride(0),
        b_cols.stride(0),
        b_cols.stride(1),
        y2.stride(0),
        y2.stride(1),
        BLOCK_M=EXPAND_BLOCK_M,
        BLOCK_N=EXPAND_BLOCK_N,
        BLOCK_R=EXPAND_BLOCK_R,
    )


def _pad_rows(t: torch.Tensor, rows: int) -> torch.Tensor:
    """``t`` [r, d] zero-padded to [rows, d] (adapter-sized, small)."""
    return t if t.shape[0] == rows else F.pad(t, (0, 0, 0, rows - t.shape[0]))


class FlexiLinearTriton(torch.autograd.Function):
    """``F.linear(x, W, b)`` plus the per-row-rank adapter update at top rank ``top``.

    Shapes: ``x`` [N, *, in] (contiguous), ``A`` [r_max, in], ``B`` [out, r_max],
    ``ranks`` [N'] with N'·k = rows of ``x`` flattened to [M, in] for an integer k.
    Saves only ``h`` [M, R] besides what the base saves.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, A, B, ranks, scale_table, top):  # type: ignore[override]
        d_in, d_out = x.shape[-1], weight.shape[0]
        x2 = x.reshape(-1, d_in)
        out = F.linear(x, weight, bias)
        h = shrink(x2, A[:top], ranks, scale_table)
        expand_(out.view(-1, d_out), h, B[:, :top], ranks)
        ctx.top = top
        ctx.has_bias = bias is not None
        ctx.save_for_backward(x, weight, A, B, ranks, scale_table, h)
        return out

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        x, weight, A, B, ranks, scale_table, h = ctx.saved_tensors
        need_x, need_w, need_b, need_a, need_bb = ctx.needs_input_grad[:5]
        top, d_in, d_out = ctx.top, x.shape[-1], weight.shape[0]
        g2 = grad_out.reshape(-1, d_out)
        x2 = x.reshape(-1, d_in)
        grad_x = grad_a = grad_b_lora = grad_w = grad_bias = None
        if need_x:
            grad_x = (g2 @ weight).view(x.shape)
        if need_a or need_x:
            gh = shrink(g2, B[:, :top].T, ranks, scale_table)
            if need_x:
                expand_(grad_x.view(-1, d_in), gh, A[:top].T, ranks)
            if need_a:
                grad_a = _pad_rows(gh[:, :top].T @ x2, A.shape[0])
        if need_bb:
            grad_b_lora = _pad_rows(h[:, :top].T @ g2, B.shape[1]).T.contiguous()
        if need_w:
            grad_w = g2.T @ x2
        if need_b and ctx.has_bias:
            grad_bias = g2.sum(0)
        return grad_x, grad_w, grad_bias, grad_a, grad_b_lora, None, None, None
