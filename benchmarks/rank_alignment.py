"""Does a low rank cost more than a high one in one adapted layer, and does padding it help?

    python benchmarks/rank_alignment.py --device cuda          # Whisper small's layer shapes
    python benchmarks/rank_alignment.py --device cpu --rows 4 --positions 100

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
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from flexispeech.lora.fold import _FoldedLinear, adapter_block, folded_forward
from flexispeech.lora.kernels import _FlexiLinear, fused_forward
from flexispeech.lora.plans import block_mask, make_plan, rank_mask

# Whisper small: d_model 768, fc1 768 -> 3072, fc2 3072 -> 768
SHAPES = {"attn": (768, 768), "fc1": (768, 3072), "fc2": (3072, 768)}


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
) -> dict[str, Callable[[], None]]:
    """name -> one call: ``train`` rows run forward + backward, ``infer`` rows forward only."""
    g = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(rows, positions, d_in, generator=g).to(device, dtype).requires_grad_(True)
    w = (torch.randn(d_out, d_in, generator=g) / d_in**0.5).to(device, dtype).requires_grad_(True)
    b = torch.zeros(d_out, device=device, dtype=dtype, requires_grad=True)
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
        if r < pad <= r_max:
            mask = block_mask(rank_mask(torch.full((rows,), r, device=device), scales, pad, dtype), 0, rows)
            padded = [(0, rows, pad, None)]
            out[f"train r={r} padded to {pad}"] = train(padded, mask)
            out[f"infer r={r} padded to {pad}"] = infer(padded, mask)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--dtype", choices=("bfloat16", "float32"), default=None, help="default: bf16 on CUDA"
    )
    parser.add_argument("--rows", type=int, default=32, help="batch rows (default 32)")
    parser.add_argument("--positions", type=int, default=1500, help="positions per row (default 1500)")
    parser.add_argument("--ranks", default="4,8,16,32,64", help="uniform ranks to time")
    parser.add_argument("--pad", type=int, default=16, help="pad ranks under this to it (default 16)")
    parser.add_argument("--r-max", type=int, default=64)
    parser.add_argument("--shapes", default="attn,fc1,fc2", help=f"of {','.join(SHAPES)}")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--mixed", action="store_true", help="also a rank-sorted mixed batch")
    parser.add_argument("--profile", action="store_true", help="profile the mixed training calls")
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    ranks = [int(r) for r in args.ranks.split(",")]
    timer = _timer(device)
    print(f"device={device} dtype={dtype} rows={args.rows} positions={args.positions} r_max={args.r_max}")
    if device.type == "cuda":
        print(torch.cuda.get_device_name(), "torch", torch.__version__)
    for name in args.shapes.split(","):
        d_in, d_out = SHAPES[name]
        calls = variants(
            d_in, d_out, args.rows, args.positions, ranks, args.pad, args.r_max, dtype, device, args.mixed
        )
        times: dict[str, list[float]] = {k: [] for k in calls}
        for i in range(args.warmup + args.reps):
            for k, fn in calls.items():  # interleaved: drift hits every row alike
                t = timer(fn)
                if i >= args.warmup:
                    times[k].append(t)
        med = {k: statistics.median(v) for k, v in times.items()}
        print(f"\n{name}: {d_in} -> {d_out}")
        print("| kind | variant | ms | vs base |")
        print("| --- | --- | ---: | ---: |")
        for k, ms in med.items():
            kind, variant = k.split(" ", 1)
            print(f"| {kind} | {variant} | {ms:.3f} | {ms / med[f'{kind} base']:.2f}x |")
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
