"""Host time per adapted layer: Flexi-LoRA's eager training step against PEFT LoRA's.

    python benchmarks/host_overhead.py
    python benchmarks/host_overhead.py --kernels old_kernels.py   # A/B a change of the fused node

On a GPU a small model's eager training step is bound by the host: Python and launch work
per layer, not arithmetic (benchmarks/RESULTS.md, rounds 2-4). This script measures that
work on any machine: a stack of tiny linear layers (64 x 64, 8 rows x 3 tokens) whose
arithmetic is negligible, each adapted by PEFT LoRA at r=64 or by Flexi-LoRA with ranks
{0, 4, 16, 64} (mixed rows, or all rows at one rank), forward + backward, interleaved
round by round on one thread. It prints the median microseconds per layer and the ratio
to PEFT, measured side by side in one run.

``--kernels FILE`` also times the fused node (``_FlexiLinear``) of another copy of
``flexispeech/lora/kernels.py`` (e.g. ``git show REV:flexispeech/lora/kernels.py``) in
the same run, swapped in for its rows only.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn as nn

WIDTH, ROWS, TOKENS = 64, 8, 3
RANKS = (0, 4, 16, 64)
MIXED = [64, 64, 16, 16, 4, 4, 0, 0]


def _stack(layers: int) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(*[nn.Linear(WIDTH, WIDTH) for _ in range(layers)])


def _load_node(path: str) -> type:
    spec = importlib.util.spec_from_file_location("flexispeech_kernels_under_test", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"host_overhead: cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module._FlexiLinear


def variants(layers: int, other_node: type | None) -> dict[str, Callable[[], None]]:
    """One training step (forward + backward, no optimizer) per variant."""
    import peft

    import flexispeech.lora.kernels as kernels
    from flexispeech.lora import inject, use_ranks
    from flexispeech.lora.config import FlexiLoraConfig

    x = torch.randn(ROWS, TOKENS, WIDTH)
    names = [str(i) for i in range(layers)]
    base = _stack(layers).requires_grad_(False)
    peft_model = peft.get_peft_model(_stack(layers), peft.LoraConfig(r=max(RANKS), target_modules=names))
    flexi = inject(_stack(layers), FlexiLoraConfig(ranks=RANKS, target_modules=names))
    this_node = kernels._FlexiLinear

    def flexi_step(ranks: list[int], node: type) -> Callable[[], None]:
        rows = torch.tensor(ranks)

        def step() -> None:
            kernels._FlexiLinear = node  # looked up at call time by lora_linear
            try:
                with use_ranks(flexi, rows):
                    flexi(x).sum().backward()
            finally:
                kernels._FlexiLinear = this_node

        return step

    out: dict[str, Callable[[], None]] = {
        "base (frozen, input grad)": lambda: base(x.clone().requires_grad_(True)).sum().backward(),
        f"PEFT LoRA r={max(RANKS)}": lambda: peft_model(x).sum().backward(),
    }
    nodes = [("", this_node)] + ([(" [--kernels]", other_node)] if other_node is not None else [])
    for tag, node in nodes:
        out[f"Flexi mixed{tag}"] = flexi_step(MIXED, node)
        for r in (64, 4, 0):
            out[f"Flexi all r={r}{tag}"] = flexi_step([r] * ROWS, node)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=24, help="adapted layers in the stack (default 24)")
    parser.add_argument("--steps", type=int, default=60, help="steps per variant per round (default 60)")
    parser.add_argument("--rounds", type=int, default=9, help="interleaved rounds; medians are printed")
    parser.add_argument("--kernels", metavar="FILE", help="another kernels.py whose fused node to time too")
    args = parser.parse_args()
    torch.set_num_threads(1)  # host work is single-threaded; more threads only add noise
    steps = variants(args.layers, _load_node(args.kernels) if args.kernels else None)
    for step in steps.values():  # warm-up: allocator, first-call paths
        for _ in range(10):
            step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.rounds):
        for name, step in steps.items():
            started = time.perf_counter()
            for _ in range(args.steps):
                step()
            times[name].append((time.perf_counter() - started) / args.steps / args.layers * 1e6)
    peft_us = statistics.median(times[f"PEFT LoRA r={max(RANKS)}"])
    print(
        f"{args.layers} layers {WIDTH}x{WIDTH}, {ROWS} rows x {TOKENS} tokens, medians of {args.rounds} rounds\n"
    )
    print("| variant | µs per layer | × PEFT |\n|---|---:|---:|")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"| {name} | {median:.1f} | {median / peft_us:.2f} |")


if __name__ == "__main__":
    main()
