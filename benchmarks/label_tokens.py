"""What moving the label tokens into the loader's workers saves the training process: the
host time of a batch's labels, collate and whole batch preparation, before and after, side
by side in one process.

    python benchmarks/label_tokens.py                          # CPU, batch 8 of 30-s clips
    python benchmarks/label_tokens.py --batch 32 --rounds 5    # the study's GPU batch size
    python benchmarks/label_tokens.py --device cuda --batch 32

Before, the training process tokenised every batch's texts: Whisper's ``collate_waveforms``
called ``family.labels(processor, texts)`` for its ``labels``, in ``Augmenter.__call__``
(augmented runs) and ``DeviceFeatures.__call__`` (features on the GPU). Now the loader's
workers do (``training.augmented.AudioInputs``) and the training process only puts their
labels in the routed order. "Before" is timed as that call: ``collate_waveforms`` given
``family.labels`` of the texts (the body of the old ``collate_waveforms`` was the device
log-mel plus that call), and the whole ``Augmenter`` / ``DeviceFeatures`` call with the
batch's ``family.labels`` made in this process first. "After" is the code as it runs now.
Each pair is timed in interleaved rounds (before then now, now then before, ...),
medians, after one untimed round; on cuda each timing is fenced by ``torch.cuda.synchronize``.

The random batch, processor and run config are those of ``augment_cost.py``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from augment_cost import (
    SR,
    StageTimer,
    augmenter_and_batch,
    random_batch,
    run_config,
    whisper_processor,
)


def pairs(
    family: Any, processor: Any, augmenter: Any, device_features: Any, planned: Any, device: torch.device
) -> dict[str, tuple[Callable[[], Any], Callable[[], Any]]]:
    """name -> (before, after): the host work of one batch's labels as the training process
    did it and does it now. ``planned``'s inputs hold the loader's audio, lengths, labels."""
    from flexispeech.data.augment import step_generator
    from flexispeech.host_copy import to_device

    inputs = planned.batch.inputs
    texts = [str(augmenter.split.rows[i]["text"]) for i in planned.batch.rows]
    # A routed order other than the loader's (the augmented batch is routed again).
    host_index = torch.arange(len(texts)).flip(0)
    index = to_device(host_index, device)
    audio, lengths = to_device(inputs["audio"], device), to_device(inputs["lengths"], device)
    routed_texts = [texts[i] for i in host_index.tolist()]

    def collate(labels: Callable[[], torch.Tensor]) -> Callable[[], Any]:
        return lambda: family.collate_waveforms(processor, audio[index], lengths[index], labels())

    def gen() -> torch.Generator:  # the same draws in every call
        return step_generator(0, 0, device)

    return {
        "labels of the batch (host)": (
            lambda: family.labels(processor, routed_texts),
            lambda: inputs["labels"][host_index],
        ),
        "collate_waveforms (log-mel + labels)": (
            collate(lambda: family.labels(processor, routed_texts)),
            collate(lambda: inputs["labels"][host_index]),
        ),
        "Augmenter.__call__ (whole)": (
            lambda: (family.labels(processor, texts), augmenter(planned, gen())),
            lambda: augmenter(planned, gen()),
        ),
        "DeviceFeatures.__call__ (whole)": (
            lambda: (family.labels(processor, texts), device_features(planned)),
            lambda: device_features(planned),
        ),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument(
        "--run", default="static_r16", help="a recipes/synthetic/conf run (default static_r16)"
    )
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument(
        "--rounds", type=int, default=3, help="interleaved timed rounds (default 3; one untimed first)"
    )
    args = parser.parse_args(argv)

    import flexispeech
    from flexispeech.lora.router import FixedRouter
    from flexispeech.models.family import get_family
    from flexispeech.training.augmented import DeviceFeatures

    device = torch.device(args.device)
    torch.manual_seed(0)
    cfg = run_config(args.run, device)
    family = get_family("whisper")
    processor, tokenizer = whisper_processor()
    host_audio, host_lengths, texts = random_batch(args.batch, args.seconds, seed=0)
    router = FixedRouter(cfg.adapter.ranks[0])
    ranks = router({"duration": torch.full((args.batch,), args.seconds)})
    augmenter, planned = augmenter_and_batch(
        host_audio, host_lengths, texts, ranks, cfg, processor, router, device
    )
    device_features = DeviceFeatures(family, processor, augmenter.split, device)
    print(
        f"flexispeech from {Path(flexispeech.__file__).parent}; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; tokenizer {tokenizer}"
    )
    print(f"{args.run}: batch {args.batch} x {host_audio.shape[1] / SR:g} s on {device}")
    timer = StageTimer(device)
    timed = pairs(family, processor, augmenter, device_features, planned, device)
    for r in range(args.rounds + 1):
        if r == 1:
            timer.times.clear()  # round 0 warms up
        for name, (before, after) in timed.items():
            # which goes first alternates by round: neither gets the warmer caches every time
            for which in ("before", "after") if r % 2 else ("after", "before"):
                timer(f"{name}|{which}", before if which == "before" else after)
    print(f"\n| host work of the batch | before, ms | now, ms | now / before |  (medians of {args.rounds})")
    print("| --- | ---: | ---: | ---: |")
    for name in timed:
        b, a = timer.median_ms(f"{name}|before"), timer.median_ms(f"{name}|after")
        print(f"| {name} | {b:.2f} | {a:.2f} | {a / b:.3f} |")
    name = "labels of the batch (host)"
    (b_lo, b_hi), (a_lo, a_hi) = (
        (1e3 * min(t), 1e3 * max(t)) for t in (timer.times[f"{name}|before"], timer.times[f"{name}|after"])
    )
    print(f"{name}, min-max over the rounds: before {b_lo:.2f}-{b_hi:.2f} ms, now {a_lo:.2f}-{a_hi:.2f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
