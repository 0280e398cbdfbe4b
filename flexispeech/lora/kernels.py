"""Fused compute paths: the base layer and the adapter update of a mixed-rank batch in one node.

``lora_linear`` returns ``base(x)`` plus, for row ``n`` with rank ``r_n``,
``scale(r_n) * (x[n] @ A[:r_n].T) @ B[:, :r_n].T`` (shapes as in ``deltas``), in eager mode
with one dtype throughout (``fused_supported``); the grouping of the batch comes from its
``RankPlan`` (``plans``).

The paths:

- ``segmented``: when rows of equal rank sit next to each other (a batch sorted by rank,
  see ``rank_sort_order``), each run of rows is a *view*: truncated matmuls per run, no
  gather, no scatter; rank-0 runs are skipped. Cost ∝ Σ r_n and nothing for rank 0.
- ``masked`` (fused): the masked path over the span of rows with rank > 0 only.
- ``triton`` (CUDA, bf16/fp16, Triton installed): the masked path as two Triton kernels
  (``triton_kernels``): a shrink with the rank mask and scale in its epilogue and an
  in-place expand that loops only up to each block's top rank; blocks of rank-0 rows are
  skipped (they read nothing). Taken when asked for (``triton``) and on the ``static``
  path; eager ``auto`` measured faster with the torch node (``plans.choose_route``).

Both accumulate the update into the base output inside the matmul (``addmm_``, i.e. the
GEMM epilogue reads C) instead of materialising a delta and adding it, and the backward
accumulates ``grad_x`` the same way: one memory pass fewer each way. The grouping of a
batch (``RankPlan``) is computed once per batch from the ranks ``use_ranks`` saw on the
host (no device-to-host copy) and shared by every layer of the model through its
``RankSlot``. Which path a call takes is decided by ``plans.choose_route`` alone.

Graph-safe path (``static``, set by ``flexispeech.lora.set_static_path``): no ``RankPlan``,
no host sync, no data-dependent shape, so a whole training step can be captured in a CUDA
graph and replayed for any rank pattern (copy the new ranks into the captured ranks tensor first).
It runs the Triton kernels at top = r_max where they are usable (each kernel still stops
at the top rank of its own block of rows, read from device memory) and the torch masked
path at r_max elsewhere (CPU, fp32, no Triton).
"""

from __future__ import annotations

import importlib.util
import warnings

import torch
import torch.nn.functional as F

from flexispeech.lora.plans import RankPlan, Route, block_mask, expand_ranks, rank_mask


def scale_block(
    t: torch.Tensor, start: int, end: int, r: int, scale: float | None, mask: torch.Tensor
) -> torch.Tensor:
    """The block of rows ``start:end`` [(end - start) x positions, r] (``x @ A[:r].T``, or
    its gradient twin ``g @ B[:, :r]``) times each row's scale: ``scale`` in place, or with
    ``scale`` None the block's mask ``mask`` [end - start, 1, r] (``plans.block_mask``: each row's
    scale, zero at or above its rank). ``t`` may be a transposed view (``rank_mm``)."""
    if scale is None:
        return (t.view(end - start, -1, r) * mask).view(-1, r)
    return t.mul_(scale)


# On a CPU a GEMM whose output has as few columns as a low rank is slow: in the adapter's
# backward ``g^T h`` [out, r] ran 2.5-6x slower at r = 4 and 8 than the same product made
# transposed, ``(h^T g)^T`` (an output of r rows), and ``g B[:, :r]`` [rows x positions,
# r] up to 1.9x (Whisper tiny's three layer shapes, 800 and 2,048 positions, 2 cores,
# float32; 384 -> 1536 at 2,048 positions: 14.8 ms against 2.5 ms;
# ``benchmarks/rank_alignment.py --layouts``, benchmarks/RESULTS.md, "CPU: a lower rank
# costs less in eager training"). From r = 16 on the plain layout was as fast or faster
# (``g B[:, :16]`` 1.4-2.3x) and stays, as it does on GPUs (not measured).
NARROW_RANK = 16


def rank_mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` [m, r] for ``b`` [k, r] with r a rank; on a CPU below ``NARROW_RANK``
    computed as ``(b^T a^T)^T`` (the same product, a transposed view: see above)."""
    if b.shape[1] < NARROW_RANK and b.device.type == "cpu":
        return (b.T @ a.T).T
    return a @ b


def rows_of(t: torch.Tensor, start: int, end: int, width: int) -> torch.Tensor:
    """Rows ``start:end`` of ``t`` [N, ..., width] as a 2-D [rows·positions, width] view; the
    whole tensor without slicing when the block is every row (the common case)."""
    if start == 0 and end == t.shape[0]:
        return t.reshape(-1, width)
    return t[start:end].reshape(-1, width)


def first(t: torch.Tensor, r: int, dim: int) -> torch.Tensor:
    """The first ``r`` components of ``t`` along ``dim`` (0: A's rows, 1: B's columns),
    without a slicing op when ``r`` is all of them."""
    if r == t.shape[dim]:
        return t
    return t[:r] if dim == 0 else t[:, :r]


def fused_forward(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    A: torch.Tensor,
    B: torch.Tensor,
    mask: torch.Tensor,
    blocks: list[tuple[int, int, int, float | None]],
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """``F.linear(x, weight, bias)`` [N, *, out] plus the update of ``blocks`` (as
    ``_FlexiLinear``), and the ``h`` [rows·positions, r] of each block. Without autograd
    (inference) ``lora_linear`` calls it directly: the node's bookkeeping is host time."""
    d_in, d_out = x.shape[-1], weight.shape[0]
    out = F.linear(x, weight, bias)
    hs = []
    for start, end, r, scale in blocks:
        h = scale_block(rows_of(x, start, end, d_in) @ first(A, r, 0).T, start, end, r, scale, mask)
        # C += h @ B^T inside the GEMM: no delta tensor, no separate add.
        rows_of(out, start, end, d_out).addmm_(h, first(B, r, 1).T)
        hs.append(h)
    return out, hs


class _FlexiLinear(torch.autograd.Function):
    """``F.linear(x, W, b)`` plus the adapter update of ``blocks``, in one autograd node.

    ``blocks``: ``(start, end, r, scale)`` row ranges of ``x`` (dim 0) with their rank; a
    ``scale`` of ``None`` means "use ``mask``", the block's rows of the rank mask as
    [end - start, 1, r] (``plans.block_mask``; the masked path has one such block). Only the
    small ``h = scale * x @ A[:r].T`` of each block is saved besides what the base saves.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, A, B, mask, blocks):  # type: ignore[override]
        out, hs = fused_forward(x, weight, bias, A, B, mask, blocks)
        ctx.blocks = blocks
        ctx.has_bias = bias is not None
        ctx.save_for_backward(x, weight, A, B, mask, *hs)
        return out

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        x, weight, A, B, mask, *hs = ctx.saved_tensors
        need_x, need_w, need_b, need_a, need_bb = ctx.needs_input_grad[:5]
        d_in, d_out = x.shape[-1], weight.shape[0]
        g2 = grad_out.reshape(-1, d_out)
        grad_x = (g2 @ weight).view(x.shape) if need_x else None
        # One block (the masked and uniform paths): the adapter grads come straight out of
        # one matmul each, in their own layout (zero-padded to r_max only below the top
        # rank); several blocks accumulate into r_max-sized buffers.
        r_max = A.shape[0]
        single = len(ctx.blocks) == 1
        grad_a = torch.zeros_like(A) if need_a and not single else None
        grad_bt = (  # B's gradient transposed, [r_max, out]: each block adds whole rows
            torch.zeros(r_max, B.shape[0], dtype=B.dtype, device=B.device) if need_bb and not single else None
        )
        grad_bb = None
        for (start, end, r, scale), h in zip(ctx.blocks, hs):
            gs = rows_of(grad_out, start, end, d_out)
            if need_bb:
                if single:
                    grad_bb = rank_mm(gs.T, h)  # [out, r]: no transpose copy
                    if r < r_max:
                        grad_bb = F.pad(grad_bb, (0, r_max - r))
                else:
                    grad_bt[:r].addmm_(h.T, gs)
            if not (need_a or need_x):
                continue
            gh = scale_block(rank_mm(gs, first(B, r, 1)), start, end, r, scale, mask)
            if need_a:
                xs = rows_of(x, start, end, d_in)
                if single:
                    grad_a = gh.T @ xs
                    if r < r_max:
                        grad_a = F.pad(grad_a, (0, 0, 0, r_max - r))
                else:
                    grad_a[:r].addmm_(gh.T, xs)
            if need_x:
                rows_of(grad_x, start, end, d_in).addmm_(gh, first(A, r, 0))
        grad_w = g2.T @ x.reshape(-1, d_in) if need_w else None
        grad_b = g2.sum(0) if (need_b and ctx.has_bias) else None
        if need_a and grad_a is None:  # no blocks (all rows at rank 0): zero gradients
            grad_a = torch.zeros_like(A)
        if need_bb and grad_bb is None:
            grad_bb = grad_bt.T.contiguous() if grad_bt is not None else torch.zeros_like(B)
        return grad_x, grad_w, grad_b, grad_a, grad_bb, None, None


_TRITON_STATE: dict[str, bool] = {}  # "broken": a launch failed once; use the torch path


def triton_usable(x: torch.Tensor) -> bool:
    """Whether the Triton kernels can serve ``x``: a CUDA tensor in bf16/fp16 with Triton
    installed (it is optional and never imported on CPU-only machines)."""
    if (
        x.device.type != "cuda"
        or x.dtype not in (torch.bfloat16, torch.float16)
        or _TRITON_STATE.get("broken")
    ):
        return False
    if "found" not in _TRITON_STATE:
        _TRITON_STATE["found"] = importlib.util.find_spec("triton") is not None
    return _TRITON_STATE["found"]


def _triton_linear(
    x: torch.Tensor,
    base: torch.nn.Linear,
    A: torch.Tensor,
    B: torch.Tensor,
    ranks: torch.Tensor,
    scale_table: torch.Tensor,
    top: int,
) -> torch.Tensor | None:
    """The Triton node at rank ``top``, or ``None`` (with a warning, once) if it fails to run."""
    try:
        from flexispeech.lora.triton_kernels import FlexiLinearTriton

        return FlexiLinearTriton.apply(x.contiguous(), base.weight, base.bias, A, B, ranks, scale_table, top)
    except Exception as err:  # a Triton/driver mismatch must not stop training: fall back
        _TRITON_STATE["broken"] = True
        warnings.warn(
            f"Flexi-LoRA Triton kernels failed ({type(err).__name__}: {err}); using the torch path",
            stacklevel=3,
        )
        return None


def fused_supported(x: torch.Tensor, base: torch.nn.Linear, A: torch.Tensor) -> bool:
    """Whether the fused node applies: eager mode, no autocast, one dtype throughout."""
    if torch.compiler.is_compiling() or torch.is_autocast_enabled(x.device.type):
        return False
    return x.dtype == base.weight.dtype == A.dtype and (base.bias is None or base.bias.dtype == x.dtype)


def needs_grad(x: torch.Tensor, base: torch.nn.Linear, A: torch.Tensor, B: torch.Tensor) -> bool:
    """Whether autograd records a layer call: grad mode on and the input, the base weight
    or the adapter requires a gradient (a training step, not inference)."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in (x, base.weight, A, B))


def lora_linear(
    x: torch.Tensor,
    base: torch.nn.Linear,
    A: torch.Tensor,
    B: torch.Tensor,
    plan: RankPlan | None,
    scales: list[float],
    route: Route,
    default_rank: int | None = None,
) -> torch.Tensor:
    """``base(x)`` plus the adapter update in one autograd node (see the module docstring),
    computed as ``route`` says (``plans.choose_route`` decides; ``route.kernel`` is
    ``fused`` or ``triton``, ``route.grouping`` ``uniform``, ``masked`` or ``segmented``).

    ``plan`` is the batch's ``RankPlan``; ``None`` means every row at ``default_rank``
    (no ``use_ranks`` context: no host sync at all). The Triton kernels run at the batch's
    top rank, read on the host from the plan (no sync), so a low-rank batch launches a
    narrower shrink and a shorter expand.
    """
    top = default_rank if plan is None else plan.top
    if route.kernel == "triton":
        ranks = plan.ranks if plan is not None else torch.full((1,), top, dtype=torch.long, device=x.device)
        table = (
            plan.scale_tensor(scales, x.device) if plan is not None else torch.tensor(scales, device=x.device)
        )
        out = _triton_linear(x, base, A, B, ranks, table, top)
        if out is not None:
            return out
    mask = None
    if route.grouping == "uniform":
        blocks = [(0, x.shape[0], top, scales[top])] if top else []
    elif route.grouping == "segmented":
        blocks = [(s, e, r, scales[r]) for s, e, r in plan.nonzero_runs()]
    else:
        mask = plan.span_mask(scales, x.dtype, x.device)
        blocks = [(plan.span[0], plan.span[1], plan.top, None)] if plan.top else []
    if not blocks and not (torch.is_grad_enabled() and (A.requires_grad or B.requires_grad)):
        return base(x)
    # With no blocks but gradients on, the node still runs (base only) and hands A and B
    # zero gradients, so a process whose rows are all at rank 0 keeps DDP's all-reduce in step.
    if mask is None:
        mask = A  # any tensor: save_for_backward needs one; it is unused
    if not torch.is_grad_enabled():  # inference: the same ops without the autograd node
        return fused_forward(x, base.weight, base.bias, A, B, mask, blocks)[0]
    return _FlexiLinear.apply(x, base.weight, base.bias, A, B, mask, blocks)


def static_linear(
    x: torch.Tensor,
    base: torch.nn.Linear,
    A: torch.Tensor,
    B: torch.Tensor,
    ranks: torch.Tensor,
    scale_table: torch.Tensor,
) -> torch.Tensor:
    """``base(x)`` plus the adapter update at every row's rank, with no host sync.

    ``x`` [N, *, in]; ``ranks`` [N'] on ``x``'s device with N = k·N'; ``scale_table``
    [r_max + 1] float32 on the device. The adapter always takes part in autograd (rank-0
    rows add exactly zero and give zero gradients), so the graph's shape never depends on
    the ranks. Requires ``fused_supported(x, base, A)``.
    """
    if triton_usable(x):
        out = _triton_linear(x, base, A, B, ranks, scale_table, A.shape[0])
        if out is not None:
            return out
    r_max = A.shape[0]
    mask = block_mask(rank_mask(expand_ranks(ranks, x.shape[0]), scale_table, r_max, x.dtype), 0, x.shape[0])
    return _FlexiLinear.apply(x, base.weight, base.bias, A, B, mask, [(0, x.shape[0], r_max, None)])
