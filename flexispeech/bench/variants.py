"""Speed of base, PEFT LoRA and every Flexi-LoRA path, side by side in one run.

A random-initialised ``WhisperForConditionalGeneration`` of a real shape (tiny, base, small,
large-v3) is built once; each variant adds its adapters to that same base model, is timed
(warm-up, then the median of several steps) and removed again. A training step is forward
+ backward + AdamW on the trainable parameters; the *floor* is the frozen base model's
forward + backward (gradients flow down to the positional embeddings, the cheapest way to
make autograd walk the whole network). Ratios are over the floor (training) and over the
base forward (inference). The steps and the timer are in ``steps``, the run's options in ``spec``.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

import torch
from torch import nn

from flexispeech.bench.models import (
    HOP,
    build_whisper,
    flexi_adapters,
    make_batch,
    mixed_ranks,
    peft_adapters,
    permute,
)
from flexispeech.bench.spec import BenchSpec
from flexispeech.bench.steps import (
    graphed_infer,
    graphed_train_step,
    infer_fn,
    profile_step,
    time_fn,
    train_step_fn,
)


def run_bench(spec: BenchSpec, log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Time every variant; returns rows ``{kind, variant, seconds, ratio}``."""
    from flexispeech.lora import use_ranks
    from flexispeech.lora.inject import merge_for_inference, unmerge
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
    rows: list[dict[str, Any]] = []

    graph_refs: dict[str, float] = {}

    def record(kind: str, variant: str, seconds: float, graphed: bool = False) -> None:
        ref = next((r["seconds"] for r in rows if r["kind"] == kind), seconds)
        row = {"kind": kind, "variant": variant, "seconds": seconds, "ratio": seconds / ref}
        extra = ""
        if graphed:  # graphed rows are also compared with the graphed base of their kind
            gref = graph_refs.setdefault(kind, seconds)
            row["ratio_graphed"] = seconds / gref
            extra = f"  {seconds / gref:5.2f}x of graphed base"
        rows.append(row)
        log(f"  {kind:5s} {variant:34s} {seconds * 1000:9.2f} ms  {seconds / ref:5.2f}x{extra}")

    def attempt(name: str, fn: Callable[[], None]) -> None:
        """Run one graphed variant; a capture failure is logged, not fatal."""
        try:
            fn()
        except Exception as err:  # e.g. a host sync inside the captured region
            log(f"  {name}: CUDA graph capture failed: {type(err).__name__}: {str(err)[:300]}")
        torch.cuda.synchronize()
        torch.cuda.empty_cache()

    # Floor: the frozen base, backward through every layer.
    embeds = [model.model.encoder.embed_positions.weight, model.model.decoder.embed_positions.weight]
    for p in embeds:
        p.requires_grad_(True)
    floor_step = train_step_fn(model, batch, embeds, nullcontext)
    record("train", "base (floor)", time_fn(floor_step, spec))
    if spec.profile:
        profile_step(floor_step, spec, "base (floor)")
    cuda = spec.device.startswith("cuda")
    if cuda:

        def floor_graphed() -> None:
            replay, _ = graphed_train_step(model, batch, embeds, nullcontext)
            record("train", "base (floor) graphed", time_fn(replay, spec), graphed=True)

        attempt("floor graphed", floor_graphed)
    for p in embeds:
        p.requires_grad_(False)
        p.grad = None
    model.eval()
    record("infer", "base", time_fn(infer_fn(model, batch, nullcontext), spec))
    if cuda:
        attempt(
            "base graphed",
            lambda: record(
                "infer", "base graphed", time_fn(graphed_infer(model, batch, nullcontext), spec), graphed=True
            ),
        )
    model.train()

    for same in (False, True):
        name = f"PEFT r=64 ({'same dtype' if same else 'fp32 adapter'})"
        with peft_adapters(model, 64, same) as pm:
            params = [p for p in pm.parameters() if p.requires_grad]
            record("train", name, time_fn(train_step_fn(pm, batch, params, nullcontext), spec))
            if same:  # PEFT's default fp32 adapters are 2.4-2.6x at inference (earlier runs)
                pm.eval()
                record("infer", name + " unmerged", time_fn(infer_fn(pm, batch, nullcontext), spec))
                pm.train()

    def ranks_ctx(m: nn.Module, r: Any) -> Callable[[], Any]:
        return lambda: use_ranks(m, r)

    from flexispeech.lora import adapter_parameters

    # (grouped-with-gather and segmented were 5.9-7.0x and 2.2-2.9x on GPUs in earlier
    # runs and are left out of the GPU table; they stay the CPU paths.) Every row is the
    # public API: inject, then each step under use_ranks (path, fused option, batch, ranks).
    # The "torch fused" rows are the unfolded node, which ``auto`` took on GPUs before the
    # folded path: the side-by-side baseline of the "auto" rows, which fold where it pays.
    variants = [
        ("masked", False, "plain ops masked, mixed sorted", sorted_batch, sorted_ranks),
        ("masked", True, "torch fused masked, mixed sorted", sorted_batch, sorted_ranks),
        ("masked", True, "torch fused, all r=64", batch, 64),
        ("masked", True, "torch fused, all r=16", batch, 16),
        ("masked", True, "torch fused, all r=4", batch, 4),
        ("triton", True, "triton, mixed sorted", sorted_batch, sorted_ranks),
        ("auto", True, "auto, mixed (arrival order)", batch, ranks),
        ("auto", True, "auto, mixed sorted", sorted_batch, sorted_ranks),
        ("auto", True, "auto, all r=64", batch, 64),
        ("auto", True, "auto, all r=16", batch, 16),
        ("auto", True, "auto, all r=4", batch, 4),
        ("auto", True, "auto, all r=0", batch, 0),
    ]
    if not spec.device.startswith("cuda"):
        variants += [
            ("grouped", False, "grouped (gather), mixed", batch, ranks),
            ("segmented", True, "segmented, mixed sorted", sorted_batch, sorted_ranks),
        ]
    for path, fused, name, b, r in variants:
        with flexi_adapters(model, path, fused) as fm:
            step = train_step_fn(fm, b, adapter_parameters(fm), ranks_ctx(fm, r))
            record("train", f"Flexi {name}", time_fn(step, spec))
            if spec.profile and name == "auto, mixed sorted":
                profile_step(step, spec, f"Flexi {name}")
    with flexi_adapters(model, "masked") as fm:
        fm.eval()
        record(
            "infer",
            "Flexi unmerged torch fused masked, mixed sorted",
            time_fn(infer_fn(fm, sorted_batch, ranks_ctx(fm, sorted_ranks)), spec),
        )
        for r in (64, 4):
            record(
                "infer",
                f"Flexi unmerged torch fused, all r={r}",
                time_fn(infer_fn(fm, batch, ranks_ctx(fm, r)), spec),
            )
    with flexi_adapters(model, "auto") as fm:
        fm.eval()
        record(
            "infer",
            "Flexi unmerged auto, mixed sorted",
            time_fn(infer_fn(fm, sorted_batch, ranks_ctx(fm, sorted_ranks)), spec),
        )
        record(
            "infer", "Flexi unmerged auto, mixed", time_fn(infer_fn(fm, batch, ranks_ctx(fm, ranks)), spec)
        )
        for r in (64, 16, 4):
            record(
                "infer",
                f"Flexi unmerged auto, all r={r}",
                time_fn(infer_fn(fm, batch, ranks_ctx(fm, r)), spec),
            )
        merge_for_inference(fm, 16)
        record(
            "infer", "Flexi merged fast path, all r=16", time_fn(infer_fn(fm, batch, ranks_ctx(fm, 16)), spec)
        )
        unmerge(fm)
    train_loop_rows(spec, model, batch, ranks, record, attempt)
    if cuda:
        rows.extend(throughput(spec, model, log))
    return rows


def train_loop_rows(
    spec: BenchSpec,
    model: nn.Module,
    batch: dict[str, torch.Tensor],
    ranks: torch.Tensor,
    record: Callable[..., None],
    attempt: Callable[[str, Callable[[], None]], None],
) -> None:
    """The step of ``flexispeech train`` as its loop runs it: host-side inputs (float32
    features, labels, ranks from the batch step) copied in, forward + backward (CUDA
    graphs where the trainer takes them, ``training.graphs``), gradient clipping, AdamW,
    the scheduler's zero_grad and the loss read back for the log."""
    from flexispeech.lora.inject import set_static_path
    from flexispeech.lora.plans import rank_sort_order
    from flexispeech.models.whisper import WhisperFamily
    from flexispeech.training.graphs import GraphedSteps

    order = rank_sort_order(ranks)
    host = {
        "input_features": batch["input_features"].float().cpu()[order.cpu()],
        "labels": batch["labels"].cpu()[order.cpu()],
    }
    host_ranks = ranks[order].cpu()
    loss_fn = WhisperFamily().loss
    cuda = spec.device.startswith("cuda")
    patterns = {
        "mixed sorted": host_ranks,
        "all r=64": torch.full_like(host_ranks, 64),
        "all r=4": torch.full_like(host_ranks, 4),
    }
    for graphed in (False, True) if cuda else (False,):
        with flexi_adapters(model, "auto") as fm:
            step = loop_step(fm, host, GraphedSteps(fm, loss_fn, log=lambda _: None) if graphed else None)
            label = "graphed" if graphed else "eager"

            def timed(
                step: Callable[[torch.Tensor], None] = step, label: str = label, graphed: bool = graphed
            ) -> None:
                for name, pattern in patterns.items():
                    seconds = time_fn(lambda p=pattern: step(p), spec)
                    record("train", f"flexispeech train step ({label}), {name}", seconds, graphed=graphed)

            if graphed:
                attempt("train step graphed", timed)
            else:
                timed()
            set_static_path(fm, False)


def loop_step(model: nn.Module, host: dict[str, torch.Tensor], runner: Any) -> Callable[[torch.Tensor], None]:
    """One step of ``Trainer.train`` at the given host-side ranks [B]: the graph runner's
    replay where it takes the batch, else the eager forward + backward under ``use_ranks``;
    then clipping, the trainer's AdamW, zero_grad and the loss read back."""
    from flexispeech.lora import adapter_parameters, use_ranks
    from flexispeech.models.whisper import WhisperFamily

    params = adapter_parameters(model)
    opt = torch.optim.AdamW(params, lr=1e-4)
    loss_fn = WhisperFamily().loss

    def step(ranks: torch.Tensor) -> None:
        loss = runner.run(host, ranks) if runner is not None else None
        if loss is None:
            with use_ranks(model, ranks):
                loss = loss_fn(model, host)
                loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        float(loss.detach())

    return step


def throughput(spec: BenchSpec, model: nn.Module, log: Callable[[str], None]) -> list[dict[str, Any]]:
    """Training utterances/s with log-mel features computed on the device from raw audio."""
    from transformers import WhisperFeatureExtractor

    from flexispeech.lora import adapter_parameters, use_ranks
    from flexispeech.lora.plans import rank_sort_order
    from flexispeech.models.whisper_features import log_mel  # the training loop's device log-mel

    gen = torch.Generator().manual_seed(spec.seed + 1)
    n_samples = 2 * spec.audio_ctx * HOP
    audio = (0.1 * torch.randn(spec.batch, n_samples, generator=gen)).to(spec.device)
    extractor = WhisperFeatureExtractor(feature_size=model.config.num_mel_bins)
    extractor.n_samples = n_samples  # the bench's window (as models.whisper.set_feature_window sets it)
    labels = torch.randint(0, model.config.vocab_size, (spec.batch, spec.label_len), generator=gen).to(
        spec.device
    )
    ranks = mixed_ranks(spec.batch, gen).to(spec.device)
    dtype = getattr(torch, spec.dtype)
    with flexi_adapters(model, "auto") as fm:
        params = adapter_parameters(fm)
        opt = torch.optim.AdamW(params, lr=1e-4, fused=params[0].is_cuda)

        def step() -> None:
            order = rank_sort_order(ranks)
            feats = log_mel(extractor, audio[order])[..., : 2 * spec.audio_ctx].to(dtype)
            with use_ranks(fm, ranks[order]):
                loss = fm(input_features=feats, labels=labels[order]).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        seconds = time_fn(step, spec)
    mel_s = time_fn(lambda: log_mel(extractor, audio), spec)
    log(
        f"  train throughput (log-mel on device, Flexi auto, mixed): {spec.batch / seconds:.1f} utt/s; "
        f"log-mel alone {mel_s * 1000:.2f} ms per batch"
    )
    return [
        {
            "kind": "throughput",
            "variant": "Flexi auto incl. log-mel",
            "seconds": seconds,
            "ratio": spec.batch / seconds,
        }
    ]


def format_table(rows: list[dict[str, Any]], spec: BenchSpec) -> str:
    """A markdown table of the rows."""
    lines = [
        f"### {spec.shape}, batch {spec.batch}, {spec.audio_ctx} encoder positions, {spec.dtype} on {spec.device}",
        "",
        "| kind | variant | ms | ratio | vs graphed base |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for r in rows:
        graphed = f"{r['ratio_graphed']:.2f}x" if "ratio_graphed" in r else ""
        if r["kind"] == "throughput":
            lines.append(f"| train | {r['variant']} | {r['seconds'] * 1000:.1f} | {r['ratio']:.1f} utt/s | |")
        else:
            lines.append(
                f"| {r['kind']} | {r['variant']} | {r['seconds'] * 1000:.2f} | {r['ratio']:.2f}x | {graphed} |"
            )
    return "\n".join(lines)
