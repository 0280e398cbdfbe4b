"""CPU cost of one Whisper training step under the recipe's choices, side by side in one run.

    python benchmarks/cpu_train_step.py [--model whisper-tiny.en] [--batch 8] [--repeats 3]

Times forward + backward + AdamW at batch 8 of 5-s utterances for: the full 30-s window
with adapters everywhere; a 10-s window (audio_ctx 500) with adapters everywhere; the
10-s window with the first 2 / all 4 encoder layers frozen and cached (the recipe's CPU
profile). Prints medians and each setting's ratio to the first. Absolute seconds depend on
the machine and its load; the ratios are the result.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from flexispeech import FlexiLoraConfig, inject, use_ranks
from flexispeech.models.family import Example, get_family, load_model
from flexispeech.models.whisper_prefix import encode_prefix, frozen_prefix_pattern, loss_from_prefix

SETTINGS = (  # (label, audio_ctx, cached encoder layers)
    ("30-s window, adapters everywhere", 1500, 0),
    ("10-s window, adapters everywhere", 500, 0),
    ("10-s window, 2 encoder layers cached", 500, 2),
    ("10-s window, encoder cached (decoder adapters)", 500, 4),
)


def time_setting(source: str, audio_ctx: int, cached: int, batch: int, repeats: int) -> tuple[float, float]:
    """Median step seconds and the one-off seconds per utterance to build the cache."""
    family = get_family("whisper")
    model, processor = load_model(family, source, "cpu", audio_ctx)
    inject(
        model,
        FlexiLoraConfig(
            ranks=(0, 4, 8, 16), target_modules=frozen_prefix_pattern(family.default_targets, cached)
        ),
    )
    model.train()
    rng = np.random.default_rng(0)
    examples = [
        Example(
            str(i),
            "the quick brown fox jumps over the lazy dog near the river bank",
            audio=rng.normal(0, 0.05, 16000 * 5).astype(np.float32),
        )
        for i in range(batch)
    ]
    inputs = family.collate(processor, examples)
    ranks = torch.tensor([0, 4, 8, 16] * (batch // 4 + 1))[:batch]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    t0 = time.perf_counter()
    prefix = encode_prefix(model, inputs["input_features"], cached) if cached else None
    cache_s = (time.perf_counter() - t0) / batch
    times = []
    for _ in range(repeats + 1):  # the first step warms up and is dropped
        t0 = time.perf_counter()
        with use_ranks(model, ranks):
            loss = (
                family.loss(model, inputs)
                if prefix is None
                else loss_from_prefix(model, prefix, inputs["labels"], cached)
            )
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        times.append(time.perf_counter() - t0)
    return statistics.median(times[1:]), cache_s


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="whisper-tiny.en")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rows = []
    for label, ctx, cached in SETTINGS:
        step, cache = time_setting(args.model, ctx, cached, args.batch, args.repeats)
        rows.append((label, step, cache))
        print(f"{label}: {step:.2f} s/step", flush=True)
    base = rows[0][1]
    print(
        f"\n| setting (batch {args.batch}, {torch.get_num_threads()} threads) | step s | × first | cache s/utt (once) |"
    )
    print("| --- | --- | --- | --- |")
    for label, step, cache in rows:
        print(f"| {label} | {step:.2f} | {step / base:.2f} | {cache:.3f} |")


if __name__ == "__main__":
    main()
