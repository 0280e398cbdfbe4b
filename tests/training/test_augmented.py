"""The labels of the batches made in the training process (``Augmenter``, ``DeviceFeatures``)
come from the loader's workers (``AudioInputs``), tokenised there: row for row they must be
the token ids that tokenising the batch's texts in the training process gave, in the
batch's final (routed) order, with the same special tokens and -100 padding."""

from __future__ import annotations

import pytest
import torch
from test_train_eval import corpus  # noqa: F401  (module-scoped fixture: a tiny corpus)

from flexispeech.data.augment import AugmentConfig
from flexispeech.data.speech import CorpusSplit
from flexispeech.lora.router import ThresholdRouter
from flexispeech.models.family import get_family
from flexispeech.training.augmented import AudioInputs, Augmenter, DeviceFeatures
from flexispeech.training.batch import PlannedBatch, route_rows

AUGMENT = AugmentConfig(noise_prob=1.0, snr_db=[0.0, 10.0], speed_prob=0.5, spec_augment=True)
ROWS = list(range(8))


def whisper_reference(processor, texts: list[str]) -> torch.Tensor:
    """Whisper's training labels spelled out: ``<|notimestamps|>`` (an English-only model's
    prefix after ``<|startoftranscript|>``), the text with its leading space,
    ``<|endoftext|>``; -100 after each row's end, up to the longest row."""
    tok = processor.tokenizer
    notimestamps, eot = tok.convert_tokens_to_ids(["<|notimestamps|>", "<|endoftext|>"])
    rows = [[notimestamps, *tok(" " + t.strip(), add_special_tokens=False).input_ids, eot] for t in texts]
    width = max(len(r) for r in rows)
    return torch.tensor([r + [-100] * (width - len(r)) for r in rows])


def texts_of(split: CorpusSplit, rows: list[int]) -> list[str]:
    return [str(split.rows[i]["text"]) for i in rows]


def planned_batch(family_name: str, corpus):  # noqa: F811
    """(family, processor, split, the first 8 training rows planned by an SNR router and
    read by the loader's ``AudioInputs``)."""
    family = get_family(family_name)
    _, processor = family.load("random:tiny")
    split = CorpusSplit(corpus, "train")
    router = ThresholdRouter([0, 2, 8], weights={"snr_db": -1.0}).calibrate(
        split.all_signals(), target_mean_rank=3.0
    )
    planned = PlannedBatch(route_rows(ROWS, split.signals_of(ROWS), router), 0, 0, len(ROWS), None)
    planned.batch.inputs = AudioInputs(family, processor, split).collate(planned.batch.rows)
    return family, processor, split, planned


def reordering_router(split: CorpusSplit) -> ThresholdRouter:
    """A router on another signal than the planning one (short clips first): the augmented
    batch's rows come out in another order than the loader's, so its labels must follow."""
    return ThresholdRouter([0, 2, 8], weights={"duration": -1.0}).calibrate(
        split.all_signals(), target_mean_rank=3.0
    )


@pytest.mark.parametrize("on_device", [True, False])
def test_augmented_whisper_labels_are_those_of_its_rows(corpus, monkeypatch, on_device: bool) -> None:  # noqa: F811
    """Device log-mel path (``collate_waveforms``) and host path (``family.collate``)."""
    family, processor, split, planned = planned_batch("whisper", corpus)
    if not on_device:
        monkeypatch.setattr("flexispeech.training.augmented.collates_on_device", lambda f, p: False)
    augmenter = Augmenter(AUGMENT, family, processor, split, reordering_router(split), torch.device("cpu"))
    batch = augmenter(planned, torch.Generator().manual_seed(0))
    assert batch.rows != planned.batch.rows  # re-routed: the labels were reordered
    labels = batch.inputs["labels"]
    assert (labels == -100).any()  # rows of different lengths: the padding is checked too
    assert torch.equal(labels, whisper_reference(processor, texts_of(split, batch.rows)))
    # what the training process tokenised before the workers did
    assert torch.equal(labels, family.labels(processor, texts_of(split, batch.rows)))


@pytest.mark.parametrize("on_device", [True, False])
def test_device_features_whisper_labels_are_those_of_its_rows(corpus, monkeypatch, on_device: bool) -> None:  # noqa: F811
    family, processor, split, planned = planned_batch("whisper", corpus)
    if not on_device:
        monkeypatch.setattr("flexispeech.training.augmented.collates_on_device", lambda f, p: False)
    batch = DeviceFeatures(family, processor, split, torch.device("cpu"))(planned)
    assert batch.rows == planned.batch.rows  # the planned order, kept
    labels = batch.inputs["labels"]
    assert (labels == -100).any()
    assert torch.equal(labels, whisper_reference(processor, texts_of(split, batch.rows)))
    want = family.collate(processor, [split[i] for i in batch.rows], train=True)  # the workers' whole collate
    assert torch.equal(labels, want["labels"])


def test_augmented_wav2vec2_labels_are_the_characters_of_its_rows(corpus) -> None:  # noqa: F811
    """Wav2Vec2 takes the host path (no device features): its CTC character labels follow
    the rows into their routed order too."""
    from flexispeech.models.wav2vec2 import normalize_text

    family, processor, split, planned = planned_batch("wav2vec2", corpus)
    augmenter = Augmenter(AUGMENT, family, processor, split, reordering_router(split), torch.device("cpu"))
    batch = augmenter(planned, torch.Generator().manual_seed(0))
    assert batch.rows != planned.batch.rows
    labels, tok = batch.inputs["labels"], processor.tokenizer
    assert (labels == -100).any()
    vocab = tok.get_vocab()
    for row, text in zip(labels, texts_of(split, batch.rows)):
        chars = "".join(tok.convert_ids_to_tokens(row[row != -100].tolist())).replace("|", " ")
        assert chars == normalize_text(text, vocab)
    assert torch.equal(labels, family.labels(processor, texts_of(split, batch.rows)))
