"""Decoding inputs with the log-mel made where the model is: the same features as the host
extractor, the host path where the device path does not apply, and every decoding pass
(eval, calibrate, signals) finishing its batches on the way to the model."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from mini_corpus import write_mini_corpus

from flexispeech.audio import load_audio
from flexispeech.data.speech import CorpusSplit
from flexispeech.evaluation import benefit, evaluate
from flexispeech.models.decode_features import DecodeFeatures, decode_features
from flexispeech.models.example import Example
from flexispeech.models.whisper import FAMILY, set_audio_ctx, set_feature_window
from flexispeech.signals import cache


@pytest.fixture(scope="module")
def examples(assets_dir: Path) -> list[Example]:
    return [Example(id=n, text="", audio=load_audio(assets_dir / n)) for n in ("fox.wav", "stella.wav")]


def test_the_device_path_gives_the_extractors_features(examples) -> None:
    _, processor = FAMILY.load("random:tiny")
    features = DecodeFeatures(FAMILY, processor, on_device=True)
    collated = features.collate(examples)
    assert set(collated) == {"audio", "lengths"}  # the workers only read and pad
    got = features.finish(collated, "cpu")
    want = FAMILY.collate(processor, examples, train=False)
    assert set(got) == set(want) == {"input_features", "num_frames"}
    torch.testing.assert_close(got["input_features"], want["input_features"], rtol=1e-5, atol=1e-5)
    assert torch.equal(got["num_frames"], want["num_frames"])


def test_a_clip_longer_than_the_window_takes_the_host_path(examples) -> None:
    _, processor = FAMILY.load("random:tiny")
    set_feature_window(processor, 50)  # a 1-s window: the clips are longer (long-form decoding)
    features = DecodeFeatures(FAMILY, processor, on_device=True)
    collated = features.collate(examples)
    assert "input_features" in collated and features.finish(collated, "cpu") is collated


def test_the_device_path_is_whisper_on_a_gpu_only() -> None:
    _, processor = FAMILY.load("random:tiny")
    assert decode_features(FAMILY, processor, "cuda").on_device  # a device name: no GPU needed
    assert not decode_features(FAMILY, processor, "cpu").on_device  # CPU numbers stay the extractor's
    assert not decode_features(SimpleNamespace(name="wav2vec2"), processor, "cuda").on_device
    processor.feature_extractor.do_normalize = True  # an extractor log_mel does not reproduce
    assert not decode_features(FAMILY, processor, "cuda").on_device


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    rng = np.random.default_rng(1)
    clips = [(rng.normal(0, 0.05, int(16000 * (0.5 + 0.1 * i))), "test", 0.5 + 0.1 * i) for i in range(6)]
    return write_mini_corpus(tmp_path_factory.mktemp("corpus"), clips)


@pytest.fixture
def tiny():
    model, processor = FAMILY.load("random:tiny")
    set_audio_ctx(model, 100, processor)  # a 2-s window
    return model, processor


def _forced(monkeypatch, module) -> list[int]:
    """Make ``module`` take the device path on the CPU; returns a list counting finished batches."""
    finished: list[int] = []

    class Counting(DecodeFeatures):
        def finish(self, inputs, device):
            finished.append(1)
            return super().finish(inputs, device)

    monkeypatch.setattr(
        module, "decode_features", lambda family, processor, device: Counting(family, processor, True)
    )
    return finished


def test_eval_decodes_the_same_on_the_device_path(corpus, tiny, monkeypatch) -> None:
    model, processor = tiny
    split = CorpusSplit(corpus, "test")
    kw = dict(batch_size=4, progress=False, max_new_tokens=4)
    want, _ = evaluate.decode_split(model, FAMILY, processor, split, None, **kw)
    finished = _forced(monkeypatch, evaluate)
    got, _ = evaluate.decode_split(model, FAMILY, processor, split, None, **kw)
    assert len(finished) == 2  # both batches reached the model as features
    assert [r["hyp"] for r in got] == [r["hyp"] for r in want]


def test_calibration_decodes_on_the_device_path(corpus, tiny, monkeypatch, tmp_path) -> None:
    model, processor = tiny
    split = CorpusSplit(corpus, "test")
    finished = _forced(monkeypatch, benefit)
    decodes = benefit.DecodeCache(tmp_path / "decodes.jsonl", {})
    hyps = benefit.decode_at_ranks(
        model, FAMILY, processor, split, [0], decodes, batch_size=4, progress=False
    )
    assert len(finished) == 2 and set(hyps) == {r["id"] for r in split.rows}


def test_signals_embedding_is_the_same_on_the_device_path(corpus, tiny, monkeypatch) -> None:
    model, processor = tiny
    assert cache.cache_embedding(corpus, "test", model, processor, batch_size=4, max_duration=2.0)
    want = CorpusSplit(corpus, "test").all_signals()["embedding"]
    finished = _forced(monkeypatch, cache)
    assert cache.cache_embedding(corpus, "test", model, processor, batch_size=4, max_duration=2.0, force=True)
    assert len(finished) == 2
    torch.testing.assert_close(
        CorpusSplit(corpus, "test").all_signals()["embedding"], want, rtol=1e-4, atol=1e-5
    )
