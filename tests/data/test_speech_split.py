"""Corpus splits as Examples, cached signals, and the length-bucketed sampler."""

from __future__ import annotations

import numpy as np
import soundfile as sf
import torch

from flexispeech.data.corpus import write_corpus
from flexispeech.data.speech import CorpusSplit, LengthBucketSampler, channel_of, signals_tensor


def tiny_corpus(root, n: int = 6):
    (root / "audio").mkdir(parents=True)
    rows = []
    for i in range(n):
        sf.write(root / "audio" / f"u{i}.wav", np.full(1600 * (i + 1), 0.1, dtype=np.float32), 16000)
        rows.append(
            {
                "id": f"u{i}",
                "audio": f"audio/u{i}.wav",
                "text": f"word {i}",
                "duration": 0.1 * (i + 1),
                "speaker": "s",
                "split": "train",
                "signal_snr_db": float(i),
                "signal_duration": 0.1 * (i + 1),
            }
        )
    return write_corpus(rows, root, name="tiny")


def test_corpus_split_examples_and_signals(tmp_path) -> None:
    split = CorpusSplit(tiny_corpus(tmp_path / "c"), "train", max_duration=0.45)
    assert len(split) == 4 and split.signal_names == ["snr_db", "duration"]
    ex = split[2]
    assert ex.id == "u2" and ex.text == "word 2" and ex.audio.shape == (4800,)
    assert ex.signals == {"snr_db": 2.0, "duration": 0.30000000000000004}
    sig = split.all_signals()
    assert sig["snr_db"].tolist() == [0.0, 1.0, 2.0, 3.0]
    assert split.signals_of([3, 0])["snr_db"].tolist() == [
        3.0,
        0.0,
    ]  # a batch's signals, without decoding audio
    assert signals_tensor([split[0], split[3]])["snr_db"].tolist() == [0.0, 3.0]
    sub = CorpusSplit(tmp_path / "c", "train", max_examples=3, seed=1)
    assert len(sub) == 3 and [r["id"] for r in sub.rows] == sorted(r["id"] for r in sub.rows)


def test_bucket_sampler_is_a_seeded_partition_of_similar_lengths() -> None:
    lengths = [float(x) for x in np.random.default_rng(0).uniform(1, 30, 103)]
    sampler = LengthBucketSampler(lengths, batch_size=8, seed=3, bucket_batches=4)
    epoch0 = sampler.batches(0)
    assert sorted(i for b in epoch0 for i in b) == list(range(103))  # every item once
    assert len(epoch0) == len(sampler) == 13
    assert epoch0 == LengthBucketSampler(lengths, 8, seed=3, bucket_batches=4).batches(0)  # seeded
    assert epoch0 != sampler.batches(1)  # a new order each epoch
    spread = np.mean([np.ptp([lengths[i] for i in b]) for b in epoch0 if len(b) == 8])
    unsorted = LengthBucketSampler(lengths, 8, seed=3, bucket_by_length=False).batches(0)
    spread_unsorted = np.mean([np.ptp([lengths[i] for i in b]) for b in unsorted if len(b) == 8])
    assert spread < 0.5 * spread_unsorted  # buckets cut padding


def test_signals_tensor_keeps_common_names() -> None:
    from flexispeech.models.family import Example

    out = signals_tensor(
        [
            Example("a", "x", signals={"snr_db": 1.0, "proxy": -0.5}),
            Example("b", "y", signals={"snr_db": 2.0}),
        ]
    )
    assert list(out) == ["snr_db"] and torch.equal(out["snr_db"], torch.tensor([1.0, 2.0]))


def test_channel_from_the_column_or_the_recordings_rate() -> None:
    assert channel_of({"channel": "telephone", "sample_rate": 16000}) == "telephone"  # the column wins
    assert (
        channel_of({"sample_rate": 8000}) == "telephone" and channel_of({"sample_rate": 16000}) == "wideband"
    )
    assert channel_of({"id": "u0"}) is None


def test_a_record_carries_the_channel(tmp_path) -> None:
    split = CorpusSplit(tiny_corpus(tmp_path / "c"), "train")
    assert split.record(0)["channel"] is None  # a corpus that says nothing
