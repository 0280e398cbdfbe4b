"""Batches read and collated ahead of decoding, in worker processes or in this one."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_speech_split import tiny_corpus

from flexispeech.data.loading import default_workers, load_batches
from flexispeech.data.speech import CorpusSplit
from flexispeech.models.example import Example


def lengths_and_ids(examples: list[Example]) -> dict[str, object]:
    """A collate that records what the batch held (module level: workers may pickle it)."""
    return {"n": torch.tensor([len(ex.audio) for ex in examples]), "ids": [ex.id for ex in examples]}


@pytest.mark.parametrize("workers", [0, 2])
def test_batches_in_order_with_bad_rows_reported(tmp_path, workers: int) -> None:
    corpus = tiny_corpus(tmp_path / "c", n=7)
    (tmp_path / "c" / "audio" / "u3.wav").write_bytes(b"not a wav file")  # an undecodable row
    split = CorpusSplit(corpus, "train")
    order = [6, 0, 3, 5, 1, 2, 4]
    out = list(load_batches(split, order, 3, lengths_and_ids, num_workers=workers))
    assert [b.rows for b in out] == [[6, 0], [5, 1, 2], [4]]  # asked-for order, the bad row left out
    assert [i for b in out for i, _ in b.errors] == [3]
    assert "u3.wav" in out[0].errors[0][1]
    assert out[1].inputs["ids"] == ["u5", "u1", "u2"]
    assert out[1].inputs["n"].tolist() == [1600 * 6, 1600 * 2, 1600 * 3]  # collated with their audio
    assert all(ex.audio is None for b in out for ex in b.examples)  # not sent back between processes
    assert [ex.signals["snr_db"] for ex in out[1].examples] == [5.0, 1.0, 2.0]


def test_keep_audio_keeps_samples(tmp_path) -> None:
    split = CorpusSplit(tiny_corpus(tmp_path / "c", n=2), "train")
    (batch,) = load_batches(split, [0, 1], 4, lengths_and_ids, num_workers=2, keep_audio=True)
    assert [len(ex.audio) for ex in batch.examples] == [1600, 3200]
    np.testing.assert_array_equal(batch.examples[0].audio, split[0].audio)


def test_default_workers_leave_the_cpu_to_the_model(monkeypatch) -> None:
    monkeypatch.setattr("os.cpu_count", lambda: 16)
    assert default_workers("cpu") == 0
    assert default_workers("cuda") == 8 and default_workers("cuda:1") == 8
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    assert default_workers("cuda") == 1
