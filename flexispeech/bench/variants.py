"""Speed of base, PEFT LoRA and every Flexi-LoRA path, side by side in one run.

A random-initialised ``WhisperForConditionalGeneration`` of a real shape (tiny, base, small,
large-v3) is built once; each variant adds its adapters to that same base model and removes
them again. The variants are timed in interleaved rounds (``rounds``: every round builds each
model state in turn and times each of its steps once; the median over rounds is reported),
so a drifting machine slows every row alike. A training step is forward
+ backward + AdamW on the trainable parameters; the *floor* is the frozen base model's
forward + backward (gradients flow down to the positional embeddings, the cheapest way to
make autograd walk the whole network). Ratios are over the floor (training) and over the
base forward (inference). The steps are in ``steps``, the training loop's own step in
``train_step``, the run's options in ``spec``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import torch
from torch import nn

from flexispeech.bench.models import (
    build_whisper,
    flexi_adapters,
    make_batch,
    mixed_ranks,
    peft_adapters,
    permute,
)
from flexispeech.bench.rounds import Samples, Setup, Timed, run_rounds
from flexispeech.bench.spec import BenchSpec
from flexispeech.bench.steps import (
    graphed_infer,
    graphed_train_step,
    infer_fn,
    profile_step,
    train_step_fn,
)
from flexispeech.bench.train_step import THROUGHPUT, throughput, train_loop_setups


def run_bench(spec: BenchSpec, log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Time every variant in interleaved rounds (``rounds``); returns rows ``{kind, variant,
    seconds, ratio, spread}`` (and ``ratio_graphed`` for graphed rows), ratios over the
    floor (train) and the base forward (infer) of the same run."""
    from flexispeech.lora.plans import rank_sort_order

    model = build_whisper(spec)
    model.train()
    gen = torch.Generator().manual_seed(spec.seed)
    batch = make_batch(spec, model, gen)
    ranks = mixed_ranks(spec.batch, gen)
    order = rank_sort_order(ranks)
    sorted_batch, sorted_ranks = permute(batch, order), ranks[order]
    log(
        f"shape={spec.shape} batch={spec.batch} audio_ctx={spec.audio_ctx} labels={spec.label_len} "
        f"device={spec.device} dtype={spec.dtype} ranks={sorted_ranks.tolist()}"
    )
    cuda = spec.device.startswith("cuda")
    setups = (
        base_setups(model, batch, cuda)
        + peft_setups(model, batch)
        + flexi_setups(model, batch, ranks, sorted_batch, sorted_ranks, cuda)
        + train_loop_setups(spec, model, batch, ranks)
    )
    log(f"{len(setups)} model states, {spec.reps} interleaved rounds (median of the rounds)")
    rows = ratio_rows(run_rounds(setups, spec, log, keep=row_filter(spec.only)))
    for row in rows:
        extra = f"  {row['ratio_graphed']:5.2f}x of graphed base" if "ratio_graphed" in row else ""
        log(
            f"  {row['kind']:5s} {row['variant']:34s} {row['seconds'] * 1000:9.2f} ms  "
            f"{row['ratio']:5.2f}x  {spread_text(row['spread'])}{extra}"
        )
    if spec.profile:
        profile_rows(spec, model, batch, sorted_batch, sorted_ranks)
    if cuda and (spec.only is None or re.search(spec.only, THROUGHPUT)):
        rows.extend(throughput(spec, model, log))
    return rows


REFERENCES = ("base (floor)", "base", "base (floor) graphed", "base graphed")  # every ratio's denominator


def row_filter(only: str | None) -> Callable[[Timed], bool] | None:
    """``--only``: the rows whose name the expression finds, and always the references the
    ratios are taken to (the floor and the base forward, eager and graphed)."""
    if only is None:
        return None
    pattern = re.compile(only)
    return lambda row: row.name in REFERENCES or bool(pattern.search(row.name))


def spread_text(spread: float | None) -> str:
    """``±5 %``, or ``–`` when the run had too few rounds to say."""
    return "–" if spread is None else f"±{100 * spread:.0f} %"


def ratio_rows(samples: list[Samples]) -> list[dict[str, Any]]:
    """Rows with their ratio to the first row of their kind (the floor, the base forward),
    graphed rows also to the first graphed row of their kind."""
    rows: list[dict[str, Any]] = []
    refs: dict[str, float] = {}
    graph_refs: dict[str, float] = {}
    for s in samples:
        seconds = s.median
        ref = refs.setdefault(s.kind, seconds)
        row: dict[str, Any] = {
            "kind": s.kind,
            "variant": s.name,
            "seconds": seconds,
            "ratio": seconds / ref,
            "spread": s.spread,
        }
        if s.graphed:
            row["ratio_graphed"] = seconds / graph_refs.setdefault(s.kind, seconds)
        rows.append(row)
    return rows


def base_setups(model: nn.Module, batch: dict[str, torch.Tensor], cuda: bool) -> list[Setup]:
    """The floor (the frozen base model's forward + backward: gradients flow down to the
    positional embeddings) and the base forward, each also as a CUDA graph on a GPU."""
    embeds = [model.model.encoder.embed_positions.weight, model.model.decoder.embed_positions.weight]

    @contextmanager
    def floor(graphed: bool) -> Iterator[list[Timed]]:
        for p in embeds:
            p.requires_grad_(True)
        model.train()
        try:
            if graphed:
                replay, _ = graphed_train_step(model, batch, embeds, nullcontext)
                yield [Timed("train", "base (floor) graphed", replay, graphed=True)]
            else:
                yield [
                    Timed("train", "base (floor)", train_step_fn(model, batch, embeds, nullcontext), model)
                ]
        finally:
            for p in embeds:
                p.requires_grad_(False)
                p.grad = None

    @contextmanager
    def forward(graphed: bool) -> Iterator[list[Timed]]:
        model.eval()
        try:
            if graphed:
                yield [Timed("infer", "base graphed", graphed_infer(model, batch, nullcontext), graphed=True)]
            else:
                yield [Timed("infer", "base", infer_fn(model, batch, nullcontext), model, train=False)]
        finally:
            model.train()

    setups = [Setup("floor", lambda: floor(False)), Setup("base forward", lambda: forward(False))]
    if cuda:
        setups += [
            Setup("floor graphed", lambda: floor(True), optional=True),
            Setup("base forward graphed", lambda: forward(True), optional=True),
        ]
    return setups


def peft_setups(model: nn.Module, batch: dict[str, torch.Tensor]) -> list[Setup]:
    """PEFT LoRA r=64 with fp32 adapters (PEFT's default on a bf16 model) and in the model's
    dtype; the second also unmerged inference (the fp32 adapters were 2.4-2.6x there)."""

    @contextmanager
    def peft(same: bool) -> Iterator[list[Timed]]:
        name = f"PEFT r=64 ({'same dtype' if same else 'fp32 adapter'})"
        with peft_adapters(model, 64, same) as pm:
            params = [p for p in pm.parameters() if p.requires_grad]
            rows = [Timed("train", name, train_step_fn(pm, batch, params, nullcontext), pm)]
            if same:
                rows.append(
                    Timed("infer", name + " unmerged", infer_fn(pm, batch, nullcontext), pm, train=False)
                )
            yield rows

    return [Setup("PEFT fp32 adapter", lambda: peft(False)), Setup("PEFT same dtype", lambda: peft(True))]


def flexi_setups(
    model: nn.Module,
    batch: dict[str, torch.Tensor],
    ranks: torch.Tensor,
    sorted_batch: dict[str, torch.Tensor],
    sorted_ranks: torch.Tensor,
    cuda: bool,
) -> list[Setup]:
    """Every Flexi-LoRA path through the public API (inject, then each step under
    ``use_ranks``), one setup per (path, fused option): the rows of one adapter at
    different ranks are timed next to each other in every round. The "torch fused" rows
    are the unfolded node, the side-by-side baseline of the "auto" rows, which fold where
    it pays. (Grouped-with-gather and segmented were 5.9-7.0x and 2.2-2.9x on GPUs in
    earlier runs and are left out of the GPU table; they stay the CPU paths.)"""
    from flexispeech.lora import adapter_parameters, use_ranks
    from flexispeech.lora.inject import merge_for_inference, unmerge
    from flexispeech.lora.kernels import triton_usable

    Step = tuple[str, str, dict[str, torch.Tensor], Any]  # kind, name, batch, ranks
    mixed_sorted, mixed = (sorted_batch, sorted_ranks), (batch, ranks)

    def at(kind: str, name: str, data: tuple[dict[str, torch.Tensor], Any] | int) -> Step:
        b, r = data if isinstance(data, tuple) else (batch, data)
        return (kind, name, b, r)

    groups: list[tuple[str, bool, list[Step]]] = [
        ("masked", False, [at("train", "plain ops masked, mixed sorted", mixed_sorted)]),
        (
            "masked",
            True,
            [at("train", "torch fused masked, mixed sorted", mixed_sorted)]
            + [at("train", f"torch fused, all r={r}", r) for r in (64, 16, 4)]
            + [at("infer", "unmerged torch fused masked, mixed sorted", mixed_sorted)]
            + [at("infer", f"unmerged torch fused, all r={r}", r) for r in (64, 4)],
        ),
        (
            "auto",
            True,
            [
                at("train", "auto, mixed (arrival order)", mixed),
                at("train", "auto, mixed sorted", mixed_sorted),
            ]
            + [at("train", f"auto, all r={r}", r) for r in (64, 16, 4, 0)]
            + [
                at("infer", "unmerged auto, mixed sorted", mixed_sorted),
                at("infer", "unmerged auto, mixed", mixed),
            ]
            + [at("infer", f"unmerged auto, all r={r}", r) for r in (64, 16, 4)],
        ),
    ]
    if triton_usable(batch["input_features"]):  # elsewhere the row would time the fused fallback
        groups.insert(2, ("triton", True, [at("train", "triton, mixed sorted", mixed_sorted)]))
    if not cuda:
        groups += [
            ("grouped", False, [at("train", "grouped (gather), mixed", mixed)]),
            ("segmented", True, [at("train", "segmented, mixed sorted", mixed_sorted)]),
        ]

    @contextmanager
    def flexi(path: str, fused: bool, steps: list[Step], merged: int | None = None) -> Iterator[list[Timed]]:
        with flexi_adapters(model, path, fused) as fm:
            if merged is not None:
                merge_for_inference(fm, merged)
            try:
                rows = []
                for kind, name, b, r in steps:
                    ctx = lambda r=r: use_ranks(fm, r)  # noqa: E731  (one per row: its own ranks)
                    fn = (
                        train_step_fn(fm, b, adapter_parameters(fm), ctx)
                        if kind == "train"
                        else infer_fn(fm, b, ctx)
                    )
                    rows.append(Timed(kind, f"Flexi {name}", fn, fm, train=kind == "train"))
                yield rows
            finally:
                if merged is not None:
                    unmerge(fm)

    setups = [
        Setup(
            f"Flexi {path}{'' if fused else ' (plain ops)'}", lambda p=path, f=fused, s=steps: flexi(p, f, s)
        )
        for path, fused, steps in groups
    ]
    setups.append(
        Setup(
            "Flexi merged",
            lambda: flexi("auto", True, [at("infer", "merged fast path, all r=16", 16)], merged=16),
        )
    )
    return setups


def profile_rows(
    spec: BenchSpec,
    model: nn.Module,
    batch: dict[str, torch.Tensor],
    sorted_batch: dict[str, torch.Tensor],
    sorted_ranks: torch.Tensor,
) -> None:
    """``--profile``: torch.profiler tables of the floor and of the Flexi auto mixed step,
    after the timed rounds (so the profiler does not slow any timed call)."""
    from flexispeech.lora import adapter_parameters, use_ranks

    embeds = [model.model.encoder.embed_positions.weight, model.model.decoder.embed_positions.weight]
    for p in embeds:
        p.requires_grad_(True)
    profile_step(train_step_fn(model, batch, embeds, nullcontext), spec, "base (floor)")
    for p in embeds:
        p.requires_grad_(False)
        p.grad = None
    with flexi_adapters(model, "auto") as fm:
        step = train_step_fn(fm, sorted_batch, adapter_parameters(fm), lambda: use_ranks(fm, sorted_ranks))
        profile_step(step, spec, "Flexi auto, mixed sorted")


def format_table(rows: list[dict[str, Any]], spec: BenchSpec) -> str:
    """A markdown table of the rows."""
    lines = [
        f"### {spec.shape}, batch {spec.batch}, {spec.audio_ctx} encoder positions, {spec.dtype} on {spec.device}",
        "",
        "| kind | variant | ms | ratio | spread (half IQR over rounds) | vs graphed base |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        graphed = f"{r['ratio_graphed']:.2f}x" if "ratio_graphed" in r else ""
        if r["kind"] == "throughput":
            lines.append(
                f"| train | {r['variant']} | {r['seconds'] * 1000:.1f} | {r['ratio']:.1f} utt/s | | |"
            )
        else:
            lines.append(
                f"| {r['kind']} | {r['variant']} | {r['seconds'] * 1000:.2f} | {r['ratio']:.2f}x "
                f"| {spread_text(r['spread'])} | {graphed} |"
            )
    return "\n".join(lines)
