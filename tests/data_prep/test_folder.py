"""Generic folder importer: metadata.csv (audiofolder style) and key|text transcript files."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from data_prep.folder import hash_split, link_or_copy, prepare_folder
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
    assert read_corpus_info(out)["info"]["skipped"] == {
        "missing": 1,
        "unreadable": 0,
        "outside": 0,
        "duplicate": 0,
    }


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


def _source(root: Path, seconds: float, freq: float, names=("a", "b")) -> Path:
    """A folder of ``names``.wav tones at ``freq`` and its metadata.csv."""
    for name in names:
        t = np.arange(int(seconds * SR)) / SR
        root.mkdir(parents=True, exist_ok=True)
        sf.write(root / f"{name}.wav", (0.2 * np.sin(2 * np.pi * freq * t)).astype(np.float32), SR)
    (root / "metadata.csv").write_text("file_name,transcription\n" + "".join(f"{n}.wav,{n}\n" for n in names))
    return root


def test_link_or_copy_reuses_only_the_same_file(tmp_path):
    src = _source(tmp_path / "src", 0.3, 300)
    old = _source(tmp_path / "old", 0.3, 500)  # same names, same sizes, other audio
    assert (src / "a.wav").stat().st_size == (old / "a.wav").stat().st_size
    os.utime(old / "a.wav", ns=(1, 1))  # and another modification time
    dst = tmp_path / "placed/a.wav"
    dst.parent.mkdir()
    shutil.copy(old / "a.wav", dst)  # left by an interrupted run from another source
    link_or_copy(src / "a.wav", dst)
    assert dst.read_bytes() == (src / "a.wav").read_bytes()
    inode = dst.stat().st_ino
    link_or_copy(src / "a.wav", dst)  # the same file (a hard link): reused
    assert dst.stat().st_ino == inode
    copied = tmp_path / "placed/b.wav"
    shutil.copy2(src / "b.wav", copied)  # a copy keeping size and mtime: reused
    inode = copied.stat().st_ino
    link_or_copy(src / "b.wav", copied)
    assert copied.stat().st_ino == inode


def test_interrupted_import_from_another_source_gets_the_new_audio(tmp_path):
    """An interrupted import (audio placed, no corpus.json) is resumed, but audio of the same
    name and size from another source is not taken for this source's."""
    old = _source(tmp_path / "old", 0.3, 500)
    out = tmp_path / "corpus"
    (out / "audio").mkdir(parents=True)
    shutil.copy(old / "a.wav", out / "audio/a.wav")
    src = _source(tmp_path / "src", 0.3, 300)
    prepare_folder(src, out, validation_fraction=0.0, test_fraction=0.0)
    row = next(r for r in load_corpus(out, "train") if r["id"] == "a")
    assert load_row_audio(out, row) == pytest.approx(sf.read(src / "a.wav", dtype="float32")[0], abs=1e-4)


def test_out_holding_other_data_is_refused_unless_force(tmp_path):
    a = _source(tmp_path / "a", 0.3, 300, names=("a", "b", "only_in_a"))
    b = _source(tmp_path / "b", 0.3, 500)
    out = prepare_folder(a, tmp_path / "corpus")
    with pytest.raises(FlexispeechError, match=r"corpus: already holds a corpus built .*source.*--force"):
        prepare_folder(b, out)
    assert (out / "audio/only_in_a.wav").is_file()  # untouched
    prepare_folder(b, out, force=True)
    assert sorted(p.name for p in (out / "audio").iterdir()) == ["a.wav", "b.wav"]  # no stale audio
    assert read_corpus_info(out)["info"]["source"] == str(b.resolve())

    user = tmp_path / "user"
    (user / "dataset").mkdir(parents=True)
    (user / "dataset/notes.txt").write_text("mine")
    with pytest.raises(FlexispeechError, match=r"user: not empty and not a corpus \(holds dataset\)"):
        prepare_folder(b, user)
    assert (user / "dataset/notes.txt").read_text() == "mine"

    # what an interrupted import leaves (audio/, a saved dataset/, the swap lock) is resumed
    left = tmp_path / "left"
    shutil.copytree(out / "audio", left / "audio")
    shutil.copytree(out / "dataset", left / "dataset")
    (left / ".swap.lock").touch()
    prepare_folder(b, left)
    assert read_corpus_info(left)["splits"] == read_corpus_info(out)["splits"]


def test_absolute_keys_under_src_and_keys_outside_it(tmp_path):
    src = _source(tmp_path / "src", 0.3, 300, names=("a", "b", "c"))
    _source(tmp_path / "other", 0.3, 300, names=("x",))
    lines = tmp_path / "list.tsv"
    lines.write_text(
        f"{(src / 'a.wav').resolve()}\tan absolute path\n"
        f"{src / 'b.wav'}\tabsolute, not resolved\n"
        "../other/x.wav\tabove the folder\n"
        f"{(tmp_path / 'other/x.wav').resolve()}\tabsolute, elsewhere\n"
        "c.wav\trelative\n"
    )
    out = prepare_folder(src, tmp_path / "corpus", lines, validation_fraction=0.0, test_fraction=0.0)
    rows = sorted(load_corpus(out, "train"), key=lambda r: r["id"])
    assert [(r["id"], r["audio"]) for r in rows] == [(n, f"audio/{n}.wav") for n in "abc"]
    assert read_corpus_info(out)["info"]["skipped"]["outside"] == 2
    assert not (tmp_path / "corpus/other").exists()  # where "../other/x.wav" would have gone


def test_duplicate_entries_keep_the_first_and_unlisted_audio_is_reported(tmp_path, caplog):
    src = _source(tmp_path / "src", 0.3, 300, names=("a", "b", "c"))
    (src / "metadata.csv").write_text("file_name,transcription\na.wav,first\na.wav,second\nb.wav,bee\n")
    with caplog.at_level(logging.WARNING, logger="data_prep.folder"):
        out = prepare_folder(src, tmp_path / "corpus", validation_fraction=0.0, test_fraction=0.0)
    rows = sorted(load_corpus(out, "train"), key=lambda r: r["id"])
    assert [(r["id"], r["text"]) for r in rows] == [("a", "first"), ("b", "bee")]
    assert read_corpus_info(out)["info"]["skipped"]["duplicate"] == 1
    unlisted = [r.getMessage() for r in caplog.records if "not listed" in r.getMessage()]
    assert len(unlisted) == 1 and "1 audio files" in unlisted[0] and "c.wav" in unlisted[0]


def test_metadata_csv_with_a_byte_order_mark(tmp_path):
    src = _source(tmp_path / "src", 0.3, 300)
    (src / "metadata.csv").write_bytes(b"\xef\xbb\xbf" + (src / "metadata.csv").read_bytes())
    out = prepare_folder(src, tmp_path / "corpus", validation_fraction=0.0, test_fraction=0.0)
    assert sorted(load_corpus(out, "train")["text"]) == ["a", "b"]
