"""The step of ``flexispeech train`` as ``flexispeech bench`` times it, beside the variants
(``variants``): the training loop's own step (host-side inputs, eager or CUDA-graphed,
clipping, AdamW, the loss read back) at mixed and uniform ranks, and training throughput
with log-mel features computed on the device from raw audio."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from flexispeech.bench.models import HOP, flexi_adapters, mixed_ranks
from flexispeech.bench.rounds import Setup, Timed
from flexispeech.bench.spec import BenchSpec
from flexispeech.bench.steps import time_fn

THROUGHPUT = "Flexi auto incl. log-mel"  # the throughput row's name (``--only`` matches it)


def train_loop_setups(
    spec: BenchSpec, model: nn.Module, batch: dict[str, torch.Tensor], ranks: torch.Tensor
) -> list[Setup]:
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
    patterns = {
        "mixed sorted": host_ranks,
        "all r=64": torch.full_like(host_ranks, 64),
        "all r=16": torch.full_like(host_ranks, 16),
        "all r=4": torch.full_like(host_ranks, 4),
    }

    @contextmanager
    def loop(graphed: bool) -> Iterator[list[Timed]]:
        label = "graphed" if graphed else "eager"
        with flexi_adapters(model, "auto") as fm:
            runner = GraphedSteps(fm, loss_fn, log=lambda _: None) if graphed else None
            step = loop_step(fm, host, runner)
            try:
                yield [
                    Timed(
                        "train",
                        f"flexispeech train step ({label}), {name}",
                        lambda p=pattern: step(p),
                        fm,
                        graphed=graphed,
                    )
                    for name, pattern in patterns.items()
                ]
            finally:
                set_static_path(fm, False)

    setups = [Setup("train step eager", lambda: loop(False))]
    if spec.device.startswith("cuda"):
        setups.append(Setup("train step graphed", lambda: loop(True), optional=True))
    return setups


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
            "variant": THROUGHPUT,
            "seconds": seconds,
            "ratio": spec.batch / seconds,
        }
    ]
