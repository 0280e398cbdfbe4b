"""Does a low rank cost more than a high one in one adapted layer, and does padding it help?

    python benchmarks/rank_alignment.py --device cuda          # Whisper small's layer shapes
    python benchmarks/rank_alignment.py --device cpu --rows 4 --positions 100
    python benchmarks/rank_alignment.py --device cpu --d-model 384 --rows 8 --positions 64,100,256 --layouts

On an H200 the eager training step with every row at rank 4 measured slower than with every
row at rank 16 or 64 (benchmarks/RESULTS.md, round 5). One candidate cause: the adapter's
matmuls have a dimension equal to the rank (``x @ A[:r].T`` is [M, r], ``h @ B[:, :r].T``
reduces over r, the gradients of A and B have r rows or columns), and half-precision GEMM
kernels are tiled for dimensions that are multiples of 8 or 16. This script times one fused
layer (``kernels._FlexiLinear``: base linear plus the update, forward + backward, and forward
alone without autograd) for a batch with every row at rank r, computed at rank r exactly and,
for ranks under ``--pad``, as a rank-``pad`` block whose rank mask zeroes the components at or
above r (the same result: the masked path the mixed batches already take), and folded
(``fold._FoldedLinear``: one linear through ``W + scale B[:, :r] A[:r]``). ``--mixed`` adds a
rank-sorted batch of mixed ranks (the bench's: 7 x 64, 9 x 32, 4 x 16, 8 x 8, 1 x 4, 3 x 0
of 32 rows), masked and folded by runs. Rows are interleaved round by round; medians;
ratios to the base layer's own forward + backward in the same run. ``--profile`` prints the
top operators of the mixed folded and masked training calls (torch.profiler).

``--d-model`` takes another model's widths (384: Whisper tiny); ``--frozen-base`` freezes the
base weight and bias, as adapter training does (the base's training row is then its forward
and input gradient; by default the weight's gradient is made too); ``--positions`` takes a
list, one table per length (token positions per call: rows x positions). ``--layouts`` adds,
for ranks under ``kernels.NARROW_RANK``, the training rows with the backward's rank-wide
products in the plain layout (``, plain layout``: as before ``kernels.rank_mm``; on a CPU
the package makes them transposed there), and for every rank the ``gemm`` rows: each of
the two products alone in either layout (ratios to the base training row).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from flexispeech.lora import kernels
from flexispeech.lora.fold import _FoldedLinear, adapter_block, folded_forward
from flexispeech.lora.kernels import _FlexiLinear, fused_forward
from flexispeech.lora.plans import block_mask, make_plan, rank_mask


def shapes(d_model: int) -> dict[str, tuple[int, int]]:
    """The adapted layers' (in, out) of a Whisper of width ``d_model`` (feed-forward 4 x d_model)."""
    return {"attn": (d_model, d_model), "fc1": (d_model, 4 * d_model), "fc2": (4 * d_model, d_model)}


# Whisper small: d_model 768, fc1 768 -> 3072, fc2 3072 -> 768
SHAPES = shapes(768)


def _timer(device: torch.device) -> Callable[[Callable[[], None]], float]:
    def run(fn: Callable[[], None]) -> float:
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end)
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e3

    return run


def variants(
    d_in: int,
    d_out: int,
    rows: int,
    positions: int,
    ranks: list[int],
    pad: int,
    r_max: int,
    dtype,
    device,
    mixed: bool = False,
    frozen_base: bool = False,
    layouts: bool = False,
) -> dict[str, Callable[[], None]]:
    """name -> one call: ``train`` rows run forward + backward, ``infer`` rows forward only;
    ``frozen_base``: no gradient for the base weight and bias (adapter training);
    ``layouts``: the ``, plain layout`` and ``gemm`` rows (see the module docstring)."""
    g = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(rows, positions, d_in, generator=g).to(device, dtype).requires_grad_(True)
    w = (torch.randn(d_out, d_in, generator=g) / d_in**0.5).to(device, dtype).requires_grad_(not frozen_base)
    b = torch.zeros(d_out, device=device, dtype=dtype, requires_grad=not frozen_base)
    A = (torch.randn(r_max, d_in, generator=g) / d_in**0.5).to(device, dtype).requires_grad_(True)
    B = (torch.randn(d_out, r_max, generator=g) * 0.01).to(device, dtype).requires_grad_(True)
    grad = torch.randn(rows, positions, d_out, generator=g).to(device, dtype)
    scales = torch.tensor([0.0] + [16.0 / r for r in range(1, r_max + 1)], device=device)
    out: dict[str, Callable[[], None]] = {}

    def train(blocks, mask) -> Callable[[], None]:
        def step() -> None:
            y = _FlexiLinear.apply(x, w, b, A, B, mask, blocks)
            y.backward(grad)

        return step

    def infer(blocks, mask) -> Callable[[], None]:
        def step() -> None:
            with torch.no_grad():
                fused_forward(x, w, b, A, B, mask, blocks)

        return step

    def base_train() -> None:
        F.linear(x, w, b).backward(grad)

    def base_infer() -> None:
        with torch.no_grad():
            F.linear(x, w, b)

    table = scales.tolist()

    def fold_train(runs, mask=None) -> Callable[[], None]:
        block = adapter_block(runs)

        def step() -> None:
            _FoldedLinear.apply(x, w, b, A, B, mask, runs, table, block).backward(grad)

        return step

    def fold_infer(runs) -> Callable[[], None]:
        def step() -> None:
            with torch.no_grad():
                folded_forward(x, w, b, A, B, runs, table)

        return step

    out["train base"], out["infer base"] = base_train, base_infer
    if mixed:
        per_row = [64] * 7 + [32] * 9 + [16] * 4 + [8] * 8 + [4] + [0] * 3
        per_row = (per_row * (rows // len(per_row) + 1))[:rows]
        plan = make_plan(torch.tensor(per_row, device=device), per_row)
        blocks = [(plan.span[0], plan.span[1], plan.top, None)]
        span_mask = plan.span_mask(table, dtype, device)  # the fused and folded nodes' block mask
        out["train mixed masked"], out["infer mixed masked"] = (
            train(blocks, span_mask),
            infer(blocks, span_mask),
        )
        out["train mixed folded"] = fold_train(plan.runs, span_mask)
        out["infer mixed folded"] = fold_infer(plan.runs)
    for r in ranks:
        exact = [(0, rows, r, float(scales[r]))]
        out[f"train r={r} exact"], out[f"infer r={r} exact"] = train(exact, A), infer(exact, A)
        out[f"train r={r} folded"] = fold_train([(0, rows, r)])
        out[f"infer r={r} folded"] = fold_infer([(0, rows, r)])
        if layouts and r < kernels.NARROW_RANK:
            out[f"train r={r} exact, plain layout"] = plain_layout(train(exact, A))
            out[f"train r={r} folded, plain layout"] = plain_layout(fold_train([(0, rows, r)]))
        if layouts:
            h = x.detach().reshape(-1, d_in) @ A.detach()[:r].T
            out.update(gemms(grad.reshape(-1, d_out), h, B.detach()))
        if r < pad <= r_max:
            mask = block_mask(rank_mask(torch.full((rows,), r, device=device), scales, pad, dtype), 0, rows)
            padded = [(0, rows, pad, None)]
            out[f"train r={r} padded to {pad}"] = train(padded, mask)
            out[f"infer r={r} padded to {pad}"] = infer(padded, mask)
    return out


def plain_layout(step: Callable[[], None]) -> Callable[[], None]:
    """``step`` with the backward's rank-wide products in the plain layout (``kernels.rank_mm``
    off), as the package made them before it transposed them on a CPU."""

    def run() -> None:
        narrow = kernels.NARROW_RANK
        kernels.NARROW_RANK = 0
        try:
            step()
        finally:
            kernels.NARROW_RANK = narrow

    return run


def gemms(g: torch.Tensor, h: torch.Tensor, B: torch.Tensor) -> dict[str, Callable[[], None]]:
    """The adapter backward's two rank-wide products alone, for ``g`` [M, out] and ``h``
    [M, r], in the plain layout and transposed: ``g^T h`` (B's gradient) and ``g B[:, :r]``."""
    r = h.shape[1]
    Br = B[:, :r]
    return {
        f"gemm r={r}: g^T h": lambda: g.T @ h,
        f"gemm r={r}: (h^T g)^T": lambda: (h.T @ g).T,
        f"gemm r={r}: g B[:, :r]": lambda: g @ Br,
        f"gemm r={r}: (B[:, :r]^T g^T)^T": lambda: (Br.T @ g.T).T,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--dtype", choices=("bfloat16", "float32"), default=None, help="default: bf16 on CUDA"
    )
    parser.add_argument("--rows", type=int, default=32, help="batch rows (default 32)")
    parser.add_argument(
        "--positions", default="1500", help="positions per row, or a comma list of them (default 1500)"
    )
    parser.add_argument("--ranks", default="4,8,16,32,64", help="uniform ranks to time")
    parser.add_argument("--pad", type=int, default=16, help="pad ranks under this to it (default 16)")
    parser.add_argument("--r-max", type=int, default=64)
    parser.add_argument("--shapes", default="attn,fc1,fc2", help=f"of {','.join(SHAPES)}")
    parser.add_argument("--d-model", type=int, default=768, help="model width (default 768: Whisper small)")
    parser.add_argument(
        "--frozen-base", action="store_true", help="no gradient for the base weight (adapter training)"
    )
    parser.add_argument(
        "--layouts",
        action="store_true",
        help="also the backward's rank-wide products in the plain layout, and those products alone",
    )
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--mixed", action="store_true", help="also a rank-sorted mixed batch")
    parser.add_argument("--profile", action="store_true", help="profile the mixed training calls")
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    ranks = [int(r) for r in args.ranks.split(",")]
    timer = _timer(device)
    print(
        f"device={device} dtype={dtype} rows={args.rows} positions={args.positions} r_max={args.r_max} "
        f"d_model={args.d_model} frozen_base={args.frozen_base} torch {torch.__version__}"
    )
    if device.type == "cuda":
        print(torch.cuda.get_device_name())
    widths = shapes(args.d_model)
    for positions, name in ((int(p), n) for p in args.positions.split(",") for n in args.shapes.split(",")):
        d_in, d_out = widths[name]
        calls = variants(
            d_in,
            d_out,
            args.rows,
            positions,
            ranks,
            args.pad,
            args.r_max,
            dtype,
            device,
            args.mixed,
            args.frozen_base,
            args.layouts,
        )
        times: dict[str, list[float]] = {k: [] for k in calls}
        for i in range(args.warmup + args.reps):
            for k, fn in calls.items():  # interleaved: drift hits every row alike
                t = timer(fn)
                if i >= args.warmup:
                    times[k].append(t)
        med = {k: statistics.median(v) for k, v in times.items()}
        print(f"\n{name}: {d_in} -> {d_out}, {args.rows} x {positions} = {args.rows * positions} positions")
        print("| kind | variant | ms | vs base |")
        print("| --- | --- | ---: | ---: |")
        for k, ms in med.items():
            kind, variant = k.split(" ", 1)
            print(
                f"| {kind} | {variant} | {ms:.3f} | {ms / med.get(f'{kind} base', med['train base']):.2f}x |"
            )
        if args.profile and args.mixed:
            from torch.profiler import ProfilerActivity, profile

            activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
            for k in ("train mixed folded", "train mixed masked"):
                with profile(activities=activities) as prof:
                    for _ in range(3):
                        calls[k]()
                    if device.type == "cuda":
                        torch.cuda.synchronize()
                sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
                print(f"\nprofile, {name}, {k} (3 calls):")
                print(prof.key_averages().table(sort_by=sort, row_limit=12))


if __name__ == "__main__":
    main()
