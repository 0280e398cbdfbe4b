"""Whisper's log-mel on device tensors against transformers' feature extractor."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from flexispeech.audio import load_audio
from flexispeech.data.augment import pad_waveforms
from flexispeech.models.family import Example
from flexispeech.models.whisper import FAMILY, set_feature_window
from flexispeech.models.whisper_features import device_log_mel_supported, log_mel


@pytest.fixture(scope="module")
def clips(assets_dir: Path) -> list[np.ndarray]:
    return [load_audio(assets_dir / n) for n in ("fox.wav", "stella.wav", "meeting.wav")]


@pytest.mark.parametrize("positions", [1500, 150])
def test_log_mel_equals_the_extractor(clips, positions: int) -> None:
    """At 30 s and at a 3-s window (clips cut to it): the extractor's features."""
    _, processor = FAMILY.load("random:tiny")
    set_feature_window(processor, positions)
    fe = processor.feature_extractor
    want = torch.from_numpy(fe(clips, sampling_rate=16000, return_tensors="np").input_features)
    audio, _ = pad_waveforms(clips)
    got = log_mel(fe, audio)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_collate_waveforms_equals_collate(clips) -> None:
    _, processor = FAMILY.load("random:tiny")
    texts = ["the quick brown fox", "please call stella", "the meeting"]
    want = FAMILY.collate(
        processor, [Example(id=str(i), text=t, audio=c) for i, (t, c) in enumerate(zip(texts, clips))]
    )
    audio, lengths = pad_waveforms(clips)
    got = FAMILY.collate_waveforms(processor, audio, lengths, FAMILY.labels(processor, texts))
    assert set(got) == set(want)
    torch.testing.assert_close(got["input_features"], want["input_features"], rtol=1e-5, atol=1e-5)
    assert torch.equal(got["num_frames"], want["num_frames"]) and torch.equal(got["labels"], want["labels"])


def test_an_extractor_it_does_not_reproduce_is_refused() -> None:
    _, processor = FAMILY.load("random:tiny")
    fe = processor.feature_extractor
    assert device_log_mel_supported(fe)
    fe.do_normalize = True  # per-clip normalisation of the waveform: not what log_mel does
    assert not device_log_mel_supported(fe)
    labels = FAMILY.labels(processor, ["x"])
    assert FAMILY.collate_waveforms(processor, torch.zeros(1, 16000), torch.tensor([16000]), labels) is None
