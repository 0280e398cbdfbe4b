"""Training batches with on-the-fly augmentation: decoded audio in, augmented and routed inputs out.

Without augmentation a batch is routed on its cached signals before it is collated
(``training.batch``). Augmentation changes what the router reads: noise lowers the SNR,
speed perturbation changes the duration. So here the loader's workers only decode the
rows' audio and tokenise their label texts (:class:`AudioInputs`), and the training
process, on the training device:

1. pads the clips and runs ``augment_waveforms`` (speed, reverberation, noise at a sampled SNR);
2. unpads them and recomputes their audio signals (``signals.audio``: duration, snr_db,
   speech_activity), keeping the cached proxy (a base-model decoding pass per step would
   cost more than the step);
3. routes and collates them through the batch step (``prepare_batch``), so that an example
   is trained at the rank the router would give it at serving time; the workers' labels
   are only put in the new row order (tokenising them here took 10.3 of the 24.8 ms of
   an augmentation on an H200, host time that a small model's step does not hide:
   benchmarks/RESULTS.md, round 10);
4. Whisper: SpecAugment on the log-mel features (Wav2Vec2 gets the waveform ops only).

Every random number comes from the step's generator (``data.augment.step_generator``),
so a run is deterministic by seed and a resumed run redraws each step exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from flexispeech.audio import SAMPLE_RATE
from flexispeech.data.augment import (
    AugmentBanks,
    AugmentConfig,
    augment_waveforms,
    pad_waveforms,
    spec_augment,
    unpad_waveforms,
)
from flexispeech.data.split import Split
from flexispeech.errors import ConfigError
from flexispeech.host_copy import to_device
from flexispeech.lora.router import RandomRouter, Router
from flexispeech.models.family import Example, ModelFamily, SpeechFamily
from flexispeech.signals.audio import audio_signals
from flexispeech.training.batch import Batch, PlannedBatch, prepare_batch

SPEECH_FAMILIES = ("whisper", "wav2vec2")


def augmenting(cfg: AugmentConfig) -> bool:
    """Whether ``cfg`` changes any training batch."""
    return cfg.waveform_ops or cfg.spec_augment


def check_augment(cfg: AugmentConfig, family: str, cache_encoder_layers: int) -> None:
    """ConfigError (one line) for augmentation a run cannot apply."""
    if not augmenting(cfg):
        return
    if family not in SPEECH_FAMILIES:
        raise ConfigError(
            f"augment: speech augmentation applies to whisper and wav2vec2, not to the {family} family"
        )
    if cache_encoder_layers > 0:
        raise ConfigError(
            "augment: needs model.cache_encoder_layers: 0 (a cached encoder prefix is computed once from the "
            "un-augmented audio)"
        )


@dataclass
class AudioInputs:
    """The loader's part: split rows -> ``audio`` [B, T] float32 (zero padded), ``lengths``
    [B] long and ``labels`` [B, L] long (the family's ``labels`` of the rows' texts, -100
    padded), all in the order of ``rows``; the loss is the family's on the batch
    :class:`Augmenter` or :class:`DeviceFeatures` makes.

    ``processor``: the family's (its tokenizer makes the labels)."""

    family: SpeechFamily
    processor: Any
    split: Split

    def collate(self, rows: Sequence[int]) -> dict[str, torch.Tensor]:
        examples = [self.split[i] for i in rows]
        audio, lengths = pad_waveforms([ex.audio for ex in examples])
        labels = self.family.labels(self.processor, [ex.text for ex in examples])
        return {"audio": audio, "lengths": lengths, "labels": labels}

    def loss(self, model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.family.loss(model, inputs)


class Augmenter:
    """The training process's part: a planned batch of decoded audio -> an augmented,
    routed, collated ``Batch``.

    Args:
        cfg: the run's augmentation config.
        family, processor: the model family and its processor (``collate``).
        split: the training split (texts and cached signals of the rows).
        router: the training router; a ``RandomRouter``'s ranks do not depend on the
            signals, so the ranks it drew when the batch was planned are kept (drawing again
            would move its generator off the checkpointed state).
        device: where the augmentation runs.
    """

    def __init__(
        self,
        cfg: AugmentConfig,
        family: SpeechFamily,
        processor: Any,
        split: Split,
        router: Router,
        device: torch.device,
    ) -> None:
        self.cfg, self.family, self.processor, self.split = cfg, family, processor, split
        self.router, self.device = router, device
        self.banks = AugmentBanks.load(cfg, SAMPLE_RATE, device)

    def collate(self, examples: list[Example], labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """``family.collate`` of the Examples (their audio on the host) with their ``labels``
        [B, L] as the loader made them."""
        # Features of the augmented clips on the training device: this runs in the training
        # process, between steps, where a CPU log-mel of a batch would idle the GPU.
        device = None if self.device.type == "cpu" else str(self.device)
        return self.family.collate(self.processor, examples, train=True, device=device, labels=labels)

    def __call__(self, planned: PlannedBatch, generator: torch.Generator) -> Batch[int]:
        """The augmented batch of ``planned`` (whose ``inputs`` hold ``AudioInputs``' audio,
        lengths and labels), every random draw from ``generator`` (on ``device``)."""
        rows, inputs = planned.batch.rows, planned.batch.inputs
        audio = to_device(inputs["audio"], self.device)
        lengths = to_device(inputs["lengths"], self.device)
        audio, lengths = augment_waveforms(audio, lengths, self.cfg, generator, SAMPLE_RATE, self.banks)
        # Only the audio signals the router reads are recomputed (a random or fixed router
        # reads none; the cached proxy stays): on 30-s clips they cost more than the step.
        needed = set() if isinstance(self.router, RandomRouter) else set(self.router.signal_names)
        texts = [str(self.split.rows[i]["text"]) for i in rows]
        # The clips go to the host only for what needs them there: audio signals, or a
        # family without a device log-mel (``collate_waveforms``).
        on_device = collates_on_device(self.family, self.processor)
        clips = unpad_waveforms(audio, lengths) if needed or not on_device else [None] * len(rows)
        examples = []
        for k, (i, clip) in enumerate(zip(rows, clips)):
            signals = {**self.split.signals(i)}
            if needed:
                signals.update(audio_signals(clip, SAMPLE_RATE, needed))
            # id: the row's place in this batch, so the device collate finds its audio
            examples.append(Example(id=str(k), text=texts[k], audio=clip, signals=signals))

        def collate(ordered: list[Example]) -> dict[str, torch.Tensor]:
            # The rows' labels in the routed order: a gather, no tokenising (the loader's workers
            # did it). Their width is the batch's longest label whatever the order.
            index = torch.tensor([int(e.id) for e in ordered])
            labels = inputs["labels"][index]
            if not on_device:
                return self.collate(ordered, labels)
            index = to_device(index, audio.device)
            return self.family.collate_waveforms(self.processor, audio[index], lengths[index], labels)

        if isinstance(self.router, RandomRouter):
            planned_ranks = planned.batch.ranks
            batch = prepare_batch(examples, lambda _s, _n: planned_ranks, collate, rows=rows)
        else:
            batch = prepare_batch(examples, self.router, collate, rows=rows)
        if self.family.name == "whisper" and self.cfg.spec_augment:
            features = batch.inputs["input_features"].to(self.device)
            batch.inputs["input_features"] = spec_augment(
                features, batch.inputs["num_frames"], self.cfg, generator
            )
        return batch


class DeviceFeatures:
    """Without augmentation, on a GPU: the loader's audio featurised in the training process.

    Whisper's log-mel of a batch of 30-s clips costs ~1 s of one CPU core (an FFT per 10 ms
    of every clip), far more than a GPU step of a small model, so loader workers on a few
    cores cannot keep the GPU fed. Here the workers only read the audio and tokenise the
    labels (``AudioInputs``) and the features are made on the training device in one
    batched STFT. The rows stay in the planned (rank) order with their planned ranks and
    the workers' labels: nothing about them changed.
    """

    def __init__(self, family: SpeechFamily, processor: Any, split: Split, device: torch.device) -> None:
        self.family, self.processor, self.split, self.device = family, processor, split, device

    def __call__(self, planned: PlannedBatch, generator: torch.Generator | None = None) -> Batch[int]:
        """The batch of ``planned`` (whose ``inputs`` hold ``AudioInputs``' audio, lengths and
        labels) with the family's training inputs; ``generator`` is not drawn from."""
        rows, inputs = planned.batch.rows, planned.batch.inputs
        labels = inputs["labels"]
        if collates_on_device(self.family, self.processor):
            audio = to_device(inputs["audio"], self.device)
            lengths = to_device(inputs["lengths"], self.device)
            features = self.family.collate_waveforms(self.processor, audio, lengths, labels)
        else:
            texts = [str(self.split.rows[i]["text"]) for i in rows]
            clips = unpad_waveforms(inputs["audio"], inputs["lengths"])
            examples = [Example(id=str(i), text=t, audio=c) for i, t, c in zip(rows, texts, clips)]
            features = self.family.collate(
                self.processor, examples, train=True, device=str(self.device), labels=labels
            )
        return replace(planned.batch, inputs=features)


def collates_on_device(family: ModelFamily, processor: Any) -> bool:
    """Whether ``family.collate_waveforms`` makes this processor's training inputs from
    device tensors (Whisper's extractor), so the audio need not go to the host."""
    from flexispeech.models.whisper_features import device_log_mel_supported

    return hasattr(family, "collate_waveforms") and device_log_mel_supported(
        getattr(processor, "feature_extractor", None)
    )


def features_on_device(family: str, device: torch.device, cache_encoder_layers: int, enabled: bool) -> bool:
    """Whether a run makes Whisper's features on its (GPU) training device (``DeviceFeatures``)."""
    return enabled and family == "whisper" and device.type == "cuda" and cache_encoder_layers == 0


def batch_maker(
    augment: AugmentConfig,
    family: ModelFamily,
    processor: Any,
    split: Split,
    router: Router,
    device: torch.device,
    cache_encoder_layers: int,
    device_features: bool,
) -> Augmenter | DeviceFeatures | None:
    """What makes a run's training batches in the training process from the audio its
    loader reads: an ``Augmenter`` when ``augment`` changes batches, else ``DeviceFeatures``
    where ``features_on_device`` applies (``device_features``: ``train.features_on_device``);
    None: the loader's workers make whole batches."""
    if augmenting(augment):
        return Augmenter(augment, family, processor, split, router, device)
    if features_on_device(family.name, device, cache_encoder_layers, device_features):
        return DeviceFeatures(family, processor, split, device)
    return None
