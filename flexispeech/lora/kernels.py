"""Compute paths for the adapter update of a batch whose rows have different ranks.

All paths compute, for row ``n`` with rank ``r_n``::

    delta[n] = scale(r_n) * (x[n] @ A[:r_n].T) @ B[:, :r_n].T

and add nothing when every row has rank 0 (rank 0 is exactly the base model). Shapes:
``x`` [N, *, in], ``A`` [r_max, in], ``B`` [out, r_max], ``ranks`` [N] (int64, same device
as ``x``), ``scale_table`` [r_max + 1] with ``scale_table[r] = scale(r)``; deltas are
[N, *, out].

Delta-only paths (plain tensor ops; autograd, autocast and ``torch.compile`` see through them):

- ``masked``: one pair of matmuls at the batch's top rank with the components above each
  row's rank zeroed (by a mask that also carries the per-row scale). Cost ∝ N · top.
  Shape-static at a fixed top rank, so it is the path used under ``torch.compile``.
- ``grouped``: rows gathered per distinct rank, truncated matmuls per group, results
  scattered back. Cost ∝ Σ r_n (+ a gather/scatter of the rows).
- ``segmented``: when rows of equal rank sit next to each other, truncated matmuls on
  views of each run, joined by one ``cat``. Cost ∝ Σ r_n, no gather or scatter; ``auto``
  takes it on CPUs when the runs are few, and ``masked`` on GPUs.
- ``uniform``: every row has the same rank r: one truncated pair of matmuls.

Fused layer paths (``lora_linear``: base + adapter in one autograd node, eager mode):

- ``segmented``: when rows of equal rank sit next to each other (a batch sorted by rank,
  see ``rank_sort_order``), each run of rows is a *view*: truncated matmuls per run, no
  gather, no scatter; rank-0 runs are skipped. Cost ∝ Σ r_n and nothing for rank 0.
- ``masked`` (fused): the masked path over the span of rows with rank > 0 only.
- ``triton`` (CUDA, bf16/fp16, Triton installed): the masked path as two Triton kernels
  (``triton_kernels``): a shrink with the rank mask and scale in its epilogue and an
  in-place expand that loops only up to each block's top rank; blocks of rank-0 rows are
  skipped (they read nothing). ``auto`` takes it on CUDA for mixed-rank batches.

Both accumulate the update into the base output inside the matmul (``addmm_``, i.e. the
GEMM epilogue reads C) instead of materialising a delta and adding it, and the backward
accumulates ``grad_x`` the same way: one memory pass fewer each way. The grouping of a
batch (``RankPlan``) is computed once per forward pass with a single host sync and shared
by every layer of the model through its ``RankSlot``.

Graph-safe path (``static``, set by ``set_static_path``): no ``RankPlan``, no host sync,
no data-dependent shape, so a whole training step can be captured in a CUDA graph and
replayed for any rank pattern (copy the new ranks into the captured ranks tensor first).
It runs the Triton kernels at top = r_max where they are usable (each kernel still stops
at the top rank of its own block of rows, read from device memory) and the torch masked
path at r_max elsewhere (CPU, fp32, no Triton).
"""

from __future__ import annotations

import importlib.util
import warnings
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F

Path = Literal["auto", "masked", "grouped", "segmented", "triton"]

# The grouped path pays a gather and a scatter of its rows; it wins when the masked path
# would waste more than this fraction of its FLOPs on components above the rows' ranks.
GROUPED_MIN_SAVING = 0.35
# The segmented path launches ~6 small matmuls per run of equal-rank rows; past this many
# runs (an unsorted batch) the launches cost more than the FLOPs they save.
MAX_SEGMENTS = 8
# Below this many token positions in one call (a decoding step: one token per row) a CPU
# matmul costs its launch, not its FLOPs, and the single masked block beats one block per
# run: benchmarks/text_step.py measured segmented decoding steps at 1.1-1.2x static.
MIN_SEGMENTED_TOKENS = 256


def uniform_delta(x: torch.Tensor, A: torch.Tensor, B: torch.Tensor, rank: int, scale: float) -> torch.Tensor | None:
    """Every row at ``rank``: ``scale * (x @ A[:rank].T) @ B[:, :rank].T`` ([N, *, out])."""
    if rank == 0:
        return None
    return (x @ A[:rank].T * scale) @ B[:, :rank].T


def rank_mask(ranks: torch.Tensor, scale_table: torch.Tensor, top: int, dtype: torch.dtype) -> torch.Tensor:
    """``mask[n, j] = scale(r_n) if j < r_n else 0``, [N, top] in ``dtype``.

    Zeroing also stops gradients to the components above r_n, which is what nested-rank
    training needs; carrying the scale in the mask saves a separate multiply.
    """
    cols = torch.arange(top, device=ranks.device)
    return ((cols < ranks[:, None]) * scale_table[ranks][:, None]).to(dtype)


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


def token_positions(x: torch.Tensor) -> int:
    """Token positions in one call: rows x sequence positions of ``x`` [..., in]."""
    return x.numel() // x.shape[-1]


def auto_takes_masked(device_type: str, tokens: int | None) -> bool:
    """Whether ``auto`` takes the one masked block over per-run blocks for a mixed batch:
    on GPUs, and on CPUs for calls under ``MIN_SEGMENTED_TOKENS`` token positions
    (decoding steps), where launches and memory, not FLOPs, bound these matmuls."""
    return device_type != "cpu" or (tokens is not None and tokens < MIN_SEGMENTED_TOKENS)


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


def plan_for(slot: Any, ranks: torch.Tensor, n_rows: int) -> RankPlan:
    """The plan of the ranks in ``slot`` expanded to ``n_rows`` rows, cached on the slot.

    All layers of a model share the slot, so the grouping (and its host sync) is done once
    per forward pass, not once per layer. The cache is keyed by the ranks tensor itself
    (kept alive, so its id cannot be reused) and its version counter (in-place edits).
    """
    key = (ranks, ranks._version)
    cache = getattr(slot, "plan_cache", None)
    if cache is None or cache[0][0] is not ranks or cache[0][1] != key[1]:
        cache = (key, {})
        slot.plan_cache = cache
    plans = cache[1]
    if n_rows not in plans:
        expanded = ranks if ranks.shape[0] == n_rows else ranks.repeat_interleave(n_rows // ranks.shape[0])
        plans[n_rows] = make_plan(expanded)
    return plans[n_rows]


class _FlexiLinear(torch.autograd.Function):
    """``F.linear(x, W, b)`` plus the adapter update of ``blocks``, in one autograd node.

    ``blocks``: ``(start, end, r, scale)`` row ranges of ``x`` (dim 0) with their rank; a
    ``scale`` of ``None`` means "use ``mask[start:end, :r]``" (the masked path). Only the
    small ``h = scale * x @ A[:r].T`` of each block is saved besides what the base saves.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, A, B, mask, blocks):  # type: ignore[override]
        n, d_in, d_out = x.shape[0], x.shape[-1], weight.shape[0]
        x3 = x.reshape(n, -1, d_in)
        out = F.linear(x, weight, bias)
        o3 = out.view(n, -1, d_out)
        hs = []
        for start, end, r, scale in blocks:
            xs = x3[start:end].reshape(-1, d_in)
            h = xs @ A[:r].T
            if scale is None:
                h = (h.view(end - start, -1, r) * mask[start:end, None, :r]).view(-1, r)
            else:
                h.mul_(scale)
            # C += h @ B^T inside the GEMM: no delta tensor, no separate add.
            o3[start:end].view(-1, d_out).addmm_(h, B[:, :r].T)
            hs.append(h)
        ctx.blocks = blocks
        ctx.has_bias = bias is not None
        ctx.save_for_backward(x, weight, A, B, mask, *hs)
        return out

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        x, weight, A, B, mask, *hs = ctx.saved_tensors
        need_x, need_w, need_b, need_a, need_bb = ctx.needs_input_grad[:5]
        n, d_in, d_out = x.shape[0], x.shape[-1], weight.shape[0]
        g2 = grad_out.reshape(-1, d_out)
        g3 = g2.view(n, -1, d_out)
        x3 = x.reshape(n, -1, d_in)
        grad_x = (g2 @ weight).view(x.shape) if need_x else None
        gx3 = grad_x.view(n, -1, d_in) if need_x else None
        # One block (the masked and uniform paths): the adapter grads come straight out of
        # one matmul each (zero-padded to r_max, adapter-sized); several blocks accumulate.
        single = len(ctx.blocks) == 1
        grad_a = torch.zeros_like(A) if need_a and not single else None
        grad_bt = torch.zeros(B.shape[1], B.shape[0], dtype=B.dtype, device=B.device) if need_bb and not single else None
        for (start, end, r, scale), h in zip(ctx.blocks, hs):
            gs = g3[start:end].reshape(-1, d_out)
            if need_bb:
                if single:
                    grad_bt = F.pad(h.T @ gs, (0, 0, 0, B.shape[1] - r))
                else:
                    grad_bt[:r].addmm_(h.T, gs)
            if not (need_a or need_x):
                continue
            gh = gs @ B[:, :r]
            if scale is None:
                gh = (gh.view(end - start, -1, r) * mask[start:end, None, :r]).view(-1, r)
            else:
                gh.mul_(scale)
            if need_a:
                if single:
                    grad_a = F.pad(gh.T @ x3[start:end].reshape(-1, d_in), (0, 0, 0, A.shape[0] - r))
                else:
                    grad_a[:r].addmm_(gh.T, x3[start:end].reshape(-1, d_in))
            if need_x:
                gx3[start:end].view(-1, d_in).addmm_(gh, A[:r])
        grad_w = g2.T @ x.reshape(-1, d_in) if need_w else None
        grad_b = g2.sum(0) if (need_b and ctx.has_bias) else None
        if need_a and grad_a is None:  # no blocks (all rows at rank 0): zero gradients
            grad_a = torch.zeros_like(A)
        if need_bb and grad_bt is None:
            grad_bt = torch.zeros(B.shape[1], B.shape[0], dtype=B.dtype, device=B.device)
        grad_bb = grad_bt.T.contiguous() if need_bb else None
        return grad_x, grad_w, grad_b, grad_a, grad_bb, None, None


_TRITON_STATE: dict[str, bool] = {}  # "broken": a launch failed once; use the torch path


def triton_usable(x: torch.Tensor) -> bool:
    """Whether the Triton kernels can serve ``x``: a CUDA tensor in bf16/fp16 with Triton
    installed (it is optional and never imported on CPU-only machines)."""
    if x.device.type != "cuda" or x.dtype not in (torch.bfloat16, torch.float16) or _TRITON_STATE.get("broken"):
        return False
    if "found" not in _TRITON_STATE:
        _TRITON_STATE["found"] = importlib.util.find_spec("triton") is not None
    return _TRITON_STATE["found"]


def _triton_linear(x: torch.Tensor, base: torch.nn.Linear, A: torch.Tensor, B: torch.Tensor,
                   plan: RankPlan, scales: list[float]) -> torch.Tensor | None:
    """The ``triton`` fused path, or ``None`` (with a warning, once) if it fails to run."""
    try:
        from flexispeech.lora.triton_kernels import FlexiLinearTriton

        table = plan.scale_tensor(scales, x.device)
        return FlexiLinearTriton.apply(x.contiguous(), base.weight, base.bias, A, B, plan.ranks, table, plan.top)
    except Exception as err:  # a Triton/driver mismatch must not stop training: fall back
        _TRITON_STATE["broken"] = True
        warnings.warn(f"Flexi-LoRA Triton kernels failed ({type(err).__name__}: {err}); using the torch path", stacklevel=3)
        return None


def fused_supported(x: torch.Tensor, base: torch.nn.Linear, A: torch.Tensor) -> bool:
    """Whether ``lora_linear`` applies: eager mode, no autocast, one dtype throughout."""
    if torch.compiler.is_compiling() or torch.is_autocast_enabled(x.device.type):
        return False
    return x.dtype == base.weight.dtype == A.dtype and (base.bias is None or base.bias.dtype == x.dtype)


def lora_linear(
    x: torch.Tensor,
    base: torch.nn.Linear,
    A: torch.Tensor,
    B: torch.Tensor,
    plan: RankPlan | None,
    scales: list[float],
    path: str = "auto",
    default_rank: int | None = None,
) -> torch.Tensor:
    """``base(x)`` plus the adapter update, fused (see the module docstring).

    ``plan`` is the batch's ``RankPlan``; ``None`` means every row at ``default_rank``
    (no ``use_ranks`` context: no host sync at all). ``path``: ``auto``, ``segmented``,
    ``masked`` or ``triton``; ``grouped`` is served by ``segmented``, which needs no
    gathers. ``triton`` (and ``auto`` where ``masked`` would be chosen) runs the Triton
    kernels when ``triton_usable``; elsewhere it is the ``masked`` path.
    """
    mask = None
    chosen = None if plan is None else plan.fused_path(path, x.device.type, token_positions(x))
    # Uniform batches too: on the H200 the torch uniform pair (1.80x at r=64) was slower
    # than the Triton kernels on a mixed batch (1.49x), and they serve any rank pattern.
    if chosen in ("masked", "triton", "uniform") and path in ("auto", "triton") and plan.top > 0 and triton_usable(x):
        out = _triton_linear(x, base, A, B, plan, scales)
        if out is not None:
            return out
    if plan is None or plan.uniform:
        r = default_rank if plan is None else plan.top
        blocks = [(0, x.shape[0], r, scales[r])] if r else []
    elif chosen == "segmented":
        blocks = [(s, e, r, scales[r]) for s, e, r in plan.nonzero_runs()]
    else:
        mask = plan.mask(scales, x.dtype, x.device)
        blocks = [(plan.span[0], plan.span[1], plan.top, None)]
    if not blocks and not (torch.is_grad_enabled() and (A.requires_grad or B.requires_grad)):
        return base(x)
    # With no blocks but gradients on, the node still runs (base only) and hands A and B
    # zero gradients, so a process whose rows are all at rank 0 keeps DDP's all-reduce in step.
    if mask is None:
        mask = A  # any tensor: save_for_backward needs one; it is unused
    return _FlexiLinear.apply(x, base.weight, base.bias, A, B, mask, blocks)


def expand_ranks(ranks: torch.Tensor, n_rows: int) -> torch.Tensor:
    """``ranks`` [N'] repeated to [n_rows] (each rank ``n_rows // N'`` times; no host sync:
    an integer repeat count is an expand + reshape)."""
    return ranks if ranks.shape[0] == n_rows else ranks.repeat_interleave(n_rows // ranks.shape[0])


def static_linear(x: torch.Tensor, base: torch.nn.Linear, A: torch.Tensor, B: torch.Tensor,
                  ranks: torch.Tensor, scale_table: torch.Tensor) -> torch.Tensor:
    """``base(x)`` plus the adapter update at every row's rank, with no host sync.

    ``x`` [N, *, in]; ``ranks`` [N'] on ``x``'s device with N = k·N'; ``scale_table``
    [r_max + 1] float32 on the device. The adapter always takes part in autograd (rank-0
    rows add exactly zero and give zero gradients), so the graph's shape never depends on
    the ranks. Requires ``fused_supported(x, base, A)``.
    """
    if triton_usable(x):
        try:
            from flexispeech.lora.triton_kernels import FlexiLinearTriton

            return FlexiLinearTriton.apply(x.contiguous(), base.weight, base.bias, A, B, ranks, scale_table, A.shape[0])
        except Exception as err:  # same fallback as _triton_linear
            _TRITON_STATE["broken"] = True
            warnings.warn(f"Flexi-LoRA Triton kernels failed ({type(err).__name__}: {err}); using the torch path", stacklevel=2)
    r_max = A.shape[0]
    mask = rank_mask(expand_ranks(ranks, x.shape[0]), scale_table, r_max, x.dtype)
    return _FlexiLinear.apply(x, base.weight, base.bias, A, B, mask, [(0, x.shape[0], r_max, None)])


def set_static_path(model: torch.nn.Module, enabled: bool = True) -> None:
    """Put every Flexi-LoRA layer of ``model`` on the graph-safe ``static`` path (or back
    to ``auto`` with ``enabled=False``).

    Use it to capture a training or inference step with ``torch.cuda.CUDAGraph``: enter
    ``use_ranks(model, ranks)`` with a device tensor *before* the capture (it validates
    the ranks with one host sync) and ``ranks.copy_(new)`` before each replay (new ranks
    must come from the configured set; the graph does not check them). The merged fast
    path is not taken on this path (choosing it needs the ranks on the host).
    """
    from flexispeech.lora.inject import flexi_layers

    for _, layer in flexi_layers(model):
        layer.compute_path = "static" if enabled else "auto"


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
