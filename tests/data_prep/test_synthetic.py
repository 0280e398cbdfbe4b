"""The synthetic corpus: builds, is deterministic, resumes, keeps splits and voices apart."""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from pathlib import Path

import pytest

from data_prep import synthetic
from data_prep.sentences import split_of
from data_prep.synthetic import prepare_synthetic
from flexispeech.cli import main
from flexispeech.data.corpus import load_corpus, load_row_audio

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs espeak-ng")


def _digest(corpus: Path) -> dict[str, str]:
    """audio path -> sha256 of its bytes, for every row of the corpus."""
    out = {}
    for ds in load_corpus(corpus).values():
        for row in ds:
            out[row["audio"]] = hashlib.sha256((corpus / row["audio"]).read_bytes()).hexdigest()
    return out


def _rows(corpus: Path) -> list[dict]:
    return [r for ds in load_corpus(corpus).values() for r in ds]


def _same_rows(a: list[dict], b: list[dict]) -> bool:
    """Row equality where NaN (clean, dry) equals NaN."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return prepare_synthetic(
        tmp_path_factory.mktemp("a") / "tiny", "tiny", seed=3, workers=1, engines=["espeak"]
    )


def test_tiny_corpus_content(tiny: Path) -> None:
    info = json.loads((tiny / "corpus.json").read_text())
    assert info["splits"] == {"train": 18, "validation": 2, "test": 4}
    assert info["info"]["engines"] == ["espeak"]
    rows = _rows(tiny)
    assert len(rows) == 24
    for row in rows:
        samples = load_row_audio(tiny, row)
        assert abs(samples.size / 16000 - row["duration"]) < 1e-3
        assert 0.3 < row["duration"] <= 29.5
        assert 1 <= len(row["text"].split()) <= 12  # tiny: short sentences
        assert (row["noise_type"] == "none") == math.isnan(row["snr_db"])
        if row["noise_type"] == "babble":
            assert row["snr_db"] >= 5.0
    # splits never share a sentence, and each sentence sits in the split its hash names
    by_split: dict[str, set[str]] = {}
    for row in rows:
        by_split.setdefault(row["split"], set()).add(row["text"])
        assert split_of(row["text"]) == row["split"]
    assert not (by_split["train"] & by_split["test"]) and not (by_split["train"] & by_split["validation"])
    # test-only voices never appear in train
    unseen = {r["speaker"] for r in rows if not r["seen_voice"]}
    assert unseen and all(r["split"] == "test" for r in rows if r["speaker"] in unseen)
    assert unseen.isdisjoint({r["speaker"] for r in rows if r["split"] != "test"})


def _stats(paths: list[Path]) -> dict[str, tuple[int, int]]:
    """path -> (inode, mtime in ns): unchanged only if the file was never rewritten."""
    return {str(p): (p.stat().st_ino, p.stat().st_mtime_ns) for p in paths}


def test_same_seed_same_corpus_and_resume(
    tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # two workers this time: the audio must not depend on how the work was spread
    again = prepare_synthetic(tmp_path / "b", "tiny", seed=3, workers=2, engines=["espeak"])
    assert _digest(again) == _digest(tiny)
    assert _same_rows(_rows(again), _rows(tiny))
    # interrupted build: no dataset, no marker, a few utterances missing -> rebuilt the same
    wavs = sorted((again / "audio").rglob("*.wav"))
    for wav in wavs[::5]:
        wav.unlink()
        wav.with_suffix(".json").unlink()
    shutil.rmtree(again / "dataset")
    (again / "corpus.json").unlink()
    kept = [
        p
        for wav in wavs[1::5] + wavs[2::5] + wavs[3::5] + wavs[4::5]
        for p in (wav, wav.with_suffix(".json"))
    ]
    before = _stats(kept)
    spoken: list[str] = []  # ids the resumed build synthesises (workers=1: rendered in this process)
    speak = synthetic._speak
    monkeypatch.setattr(
        synthetic, "_speak", lambda synth, plan, limit: spoken.append(plan.id) or speak(synth, plan, limit)
    )
    prepare_synthetic(again, "tiny", seed=3, workers=1, engines=["espeak"])
    # it resumed: only the missing utterances were synthesised, the others' files untouched
    assert sorted(spoken) == sorted(wav.stem for wav in wavs[::5])
    assert _stats(kept) == before
    assert _digest(again) == _digest(tiny)
    assert _same_rows(_rows(again), _rows(tiny))


def test_other_seed_differs_and_cli(tiny: Path, tmp_path: Path) -> None:
    out = tmp_path / "c"
    assert (
        main(
            [
                "prepare",
                "synthetic",
                "--out",
                str(out),
                "--size",
                "tiny",
                "--seed",
                "4",
                "--workers",
                "1",
                "--engines",
                "espeak",
            ]
        )
        == 0
    )
    assert _digest(out) != _digest(tiny)
    # a finished corpus with other settings is not silently reused
    assert (
        main(
            [
                "prepare",
                "synthetic",
                "--out",
                str(out),
                "--size",
                "tiny",
                "--seed",
                "5",
                "--engines",
                "espeak",
            ]
        )
        == 2
    )


@pytest.mark.slow
def test_small_build_all_engines(tmp_path: Path) -> None:
    out = prepare_synthetic(tmp_path / "small", "small", seed=0, workers=2)
    info = json.loads((out / "corpus.json").read_text())
    assert sum(info["splits"].values()) == 600
    assert info["hours"] > 0.5
    rows = _rows(out)
    assert max(r["duration"] for r in rows) <= 9.5  # the CPU profile's 10-s window hears every clip
    assert len({r["speaker"] for r in rows}) > 30


def test_compose_draws_what_filtering_the_pool_each_time_draws() -> None:
    """compose keeps each pool's candidate lists between calls (a 28,000-utterance plan took
    189 s filtering pools): the texts drawn are those of the uncached filter, call for call,
    and a pool that grew is filtered again."""
    import numpy as np

    from data_prep.sentences import compose, n_words, sentence_pools

    def reference(pool, bucket, rng):  # the filter as written before the cache
        lo, hi = bucket
        fitting = [s for s in pool if lo <= n_words(s) <= hi]
        if fitting:
            return fitting[int(rng.integers(len(fitting)))]
        parts: list[str] = []
        shorter = [s for s in pool if n_words(s) < lo] or pool
        while sum(map(n_words, parts)) < lo:
            candidate = shorter[int(rng.integers(len(shorter)))]
            if parts and sum(map(n_words, parts)) + n_words(candidate) > hi:
                break
            parts.append(candidate)
        return " ".join(parts)

    pool = sentence_pools(0, n_generated=300)["train"]
    buckets = [(1, 4), (5, 12), (13, 25), (60, 80)]  # the last one joins short sentences
    a, b = np.random.default_rng(1), np.random.default_rng(1)
    for i in range(200):
        bucket = buckets[i % len(buckets)]
        assert compose(pool, bucket, a) == reference(pool, bucket, b)
    compose(pool, (3, 3), np.random.default_rng(0))  # its lists for (3, 3) are kept now
    n = len(pool)
    pool[:] = [s for s in pool if n_words(s) != 3] + ["one two three"]  # a changed pool
    assert len(pool) != n and compose(pool, (3, 3), np.random.default_rng(0)) == "one two three"
