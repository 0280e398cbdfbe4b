"""Host time per adapted layer: Flexi-LoRA's eager training step against PEFT LoRA's.

    python benchmarks/host_overhead.py
    python benchmarks/host_overhead.py --kernels old_kernels.py   # A/B a change of the fused node

On a GPU a small model's eager training step is bound by the host: Python and launch work
per layer, not arithmetic (benchmarks/RESULTS.md, rounds 2-4). This script measures that
work on any machine: a stack of tiny linear layers (64 x 64, 8 rows x 3 tokens) whose
arithmetic is negligible, each adapted by PEFT LoRA at r=64 or by Flexi-LoRA with ranks
{0, 4, 16, 64} (mixed rows, or all rows at one rank), forward + backward (and forward
alone without autograd: the ``infer:`` rows), interleaved round by round on one thread.
It prints the median microseconds per layer and the ratio to PEFT's training step or
forward, measured side by side in one run.

``--kernels FILE`` also times another copy of ``flexispeech/lora/kernels.py`` (e.g.
``git show REV:flexispeech/lora/kernels.py``: its ``lora_linear``, the fused node and all
below the layer) in the same run, swapped in for its rows only.
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


def _load_lora_linear(path: str) -> Callable[..., torch.Tensor]:
    spec = importlib.util.spec_from_file_location("flexispeech_kernels_under_test", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"host_overhead: cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.lora_linear


def variants(layers: int, other: Callable[..., torch.Tensor] | None) -> dict[str, Callable[[], None]]:
    """One step per variant: training (forward + backward, no optimizer) or, for the
    ``infer:`` rows, a forward without autograd. ``other``: another copy's ``lora_linear``
    (the fused node and everything below the layer), swapped in for the ``[--kernels]`` rows."""
    import peft

    import flexispeech.lora.layer as layer
    from flexispeech.lora import inject, use_ranks
    from flexispeech.lora.config import FlexiLoraConfig

    x = torch.randn(ROWS, TOKENS, WIDTH)
    names = [str(i) for i in range(layers)]
    base = _stack(layers).requires_grad_(False)
    peft_model = peft.get_peft_model(_stack(layers), peft.LoraConfig(r=max(RANKS), target_modules=names))
    flexi = inject(_stack(layers), FlexiLoraConfig(ranks=RANKS, target_modules=names))
    this = layer.lora_linear

    def flexi_step(ranks: list[int], path: Callable[..., torch.Tensor], train: bool) -> Callable[[], None]:
        rows = torch.tensor(ranks)

        def step() -> None:
            layer.lora_linear = path  # looked up at call time by FlexiLoraLinear.forward
            try:
                if train:
                    with use_ranks(flexi, rows):
                        flexi(x).sum().backward()
                else:
                    with torch.no_grad(), use_ranks(flexi, rows):
                        flexi(x)
            finally:
                layer.lora_linear = this

        return step

    def no_grad(model: nn.Module) -> Callable[[], None]:
        def step() -> None:
            with torch.no_grad():
                model(x)

        return step

    out: dict[str, Callable[[], None]] = {
        "base (frozen, input grad)": lambda: base(x.clone().requires_grad_(True)).sum().backward(),
        f"PEFT LoRA r={max(RANKS)}": lambda: peft_model(x).sum().backward(),
    }
    paths = [("", this)] + ([(" [--kernels]", other)] if other is not None else [])
    for tag, path in paths:
        out[f"Flexi mixed{tag}"] = flexi_step(MIXED, path, train=True)
        for r in (64, 4, 0):
            out[f"Flexi all r={r}{tag}"] = flexi_step([r] * ROWS, path, train=True)
    out["infer: base"] = no_grad(base)
    out[f"infer: PEFT LoRA r={max(RANKS)} unmerged"] = no_grad(peft_model)
    for tag, path in paths:
        out[f"infer: Flexi mixed unmerged{tag}"] = flexi_step(MIXED, path, train=False)
        out[f"infer: Flexi all r=64 unmerged{tag}"] = flexi_step([64] * ROWS, path, train=False)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=24, help="adapted layers in the stack (default 24)")
    parser.add_argument("--steps", type=int, default=60, help="steps per variant per round (default 60)")
    parser.add_argument("--rounds", type=int, default=9, help="interleaved rounds; medians are printed")
    parser.add_argument("--kernels", metavar="FILE", help="another kernels.py whose fused node to time too")
    args = parser.parse_args()
    torch.set_num_threads(1)  # host work is single-threaded; more threads only add noise
    steps = variants(args.layers, _load_lora_linear(args.kernels) if args.kernels else None)
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
    # training rows against PEFT's training step, inference rows against PEFT's forward
    peft_us = {
        False: statistics.median(times[f"PEFT LoRA r={max(RANKS)}"]),
        True: statistics.median(times[f"infer: PEFT LoRA r={max(RANKS)} unmerged"]),
    }
    print(
        f"{args.layers} layers {WIDTH}x{WIDTH}, {ROWS} rows x {TOKENS} tokens, medians of {args.rounds} rounds\n"
    )
    print("| variant | µs per layer | × PEFT |\n|---|---:|---:|")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"| {name} | {median:.1f} | {median / peft_us[name.startswith('infer:')]:.2f} |")


if __name__ == "__main__":
    main()
