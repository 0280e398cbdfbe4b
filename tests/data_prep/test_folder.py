"""Generic folder importer: metadata.csv (audiofolder style) and key|text transcript files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from data_prep.folder import hash_split, prepare_folder
from flexispeech.data.corpus import load_corpus, load_row_audio, read_corpus_info
from flexispeech.errors import FlexispeechError

SR = 16_000


def _wav(path: Path, seconds: float, sr: int = SR) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * sr)) / sr
    sf.write(path, (0.2 * np.sin(2 * np.pi * 300 * t)).astype(np.float32), sr)


def test_metadata_csv(tmp_path):
    src = tmp_path / "data"
    _wav(src / "alice/a1.wav", 0.5)
    _wav(src / "bob/b1.flac", 1.0, sr=22_050)
    _wav(src / "bob/unlisted.wav", 1.0)
    (src / "metadata.csv").write_text(
        'file_name,transcription\nalice/a1.wav,"hello, there"\nbob/b1.flac,good bye\nbob/gone.wav,missing\n'
    )
    out = prepare_folder(src, tmp_path / "corpus", validation_fraction=0.0, test_fraction=0.0)
    rows = sorted(load_corpus(out, "train"), key=lambda r: r["id"])
    assert [r["id"] for r in rows] == ["alice/a1", "bob/b1"]
    assert [r["text"] for r in rows] == ["hello, there", "good bye"]
    assert [r["speaker"] for r in rows] == ["alice", "bob"]  # parent folder
    assert [r["duration"] for r in rows] == pytest.approx([0.5, 1.0])
    assert rows[1]["audio"] == "audio/bob/b1.flac"
    assert load_row_audio(out, rows[1]).shape == (SR,)  # resampled from 22.05 kHz
    assert read_corpus_info(out)["info"]["skipped"] == {"missing": 1, "unreadable": 0}


def test_pipe_and_tab_transcripts_by_stem(tmp_path):
    src = tmp_path / "ljs"
    for i in range(3):
        _wav(src / "wavs" / f"LJ001-000{i}.wav", 0.25)
    lines = tmp_path / "metadata.txt"
    lines.write_text(
        "LJ001-0000|Printing 1|Printing one\nLJ001-0001\tsecond line\nwavs/LJ001-0002.wav|third\n"
    )
    out = prepare_folder(src, tmp_path / "corpus", lines, validation_fraction=0.0, test_fraction=0.0)
    rows = sorted(load_corpus(out, "train"), key=lambda r: r["id"])
    assert [r["text"] for r in rows] == ["Printing one", "second line", "third"]
    assert [r["speaker"] for r in rows] == ["wavs"] * 3


def test_hash_split_is_deterministic_and_follows_fractions():
    ids = [f"utt{i}" for i in range(4000)]
    splits = [hash_split(i, 0.1, 0.2) for i in ids]
    assert splits == [hash_split(i, 0.1, 0.2) for i in ids]
    counts = {s: splits.count(s) / len(ids) for s in ("train", "validation", "test")}
    assert counts["test"] == pytest.approx(0.2, abs=0.025)
    assert counts["validation"] == pytest.approx(0.1, abs=0.02)
    # growing the test fraction only moves utterances out of validation/train into test
    wider = [hash_split(i, 0.1, 0.3) for i in ids]
    assert all(w == "test" for s, w in zip(splits, wider) if s == "test")


def test_bad_inputs(tmp_path):
    src = tmp_path / "data"
    _wav(src / "a.wav", 0.2)
    with pytest.raises(FlexispeechError, match=r"metadata\.csv: no transcript file"):
        prepare_folder(src, tmp_path / "corpus")
    (src / "metadata.csv").write_text("file_name,words\na.wav,hi\n")
    with pytest.raises(FlexispeechError, match=r"metadata\.csv: a metadata\.csv needs .*transcription"):
        prepare_folder(src, tmp_path / "corpus")
    _wav(src / "sub/a.wav", 0.2)
    (tmp_path / "t.txt").write_text("a|hello\n")
    with pytest.raises(FlexispeechError, match="matches several audio files"):
        prepare_folder(src, tmp_path / "corpus", tmp_path / "t.txt")
    with pytest.raises(FlexispeechError, match="together < 1"):
        prepare_folder(
            src, tmp_path / "corpus", tmp_path / "t.txt", validation_fraction=0.5, test_fraction=0.5
        )
