"""Common Voice importer on a tiny language folder in the released layout (mp3 tones)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from data_prep.commonvoice import prepare_commonvoice
from flexispeech.data.corpus import load_corpus, load_row_audio, read_corpus_info
from flexispeech.errors import FlexispeechError

SR = 16_000
HEADER = "client_id\tpath\tsentence\tup_votes\tdown_votes\tage\tgender\taccents\tlocale\tsegment"


def _clip(path: Path, seconds: float) -> None:
    rng = np.random.default_rng(len(path.name))
    sf.write(path, (0.1 * rng.standard_normal(int(seconds * SR))).astype(np.float32), SR)


def make_language(base: Path) -> Path:
    (base / "clips").mkdir(parents=True)
    for name, seconds in [
        ("common_voice_en_1.mp3", 1.0),
        ("common_voice_en_2.mp3", 2.0),
        ("common_voice_en_3.mp3", 1.5),
        ("common_voice_en_9.mp3", 1.0),
    ]:
        _clip(base / "clips" / name, seconds)
    (base / "train.tsv").write_text(
        f"{HEADER}\n"
        'aaa\tcommon_voice_en_1.mp3\tHe said "hi" to me.\t2\t0\ttwenties\tfemale\t\ten\t\n'
        "bbb\tcommon_voice_en_2.mp3\tThe second clip.\t3\t0\t\t\t\ten\t\n"
        "bbb\tcommon_voice_en_404.mp3\tThis clip is missing.\t2\t0\t\t\t\ten\t\n"
    )
    (base / "dev.tsv").write_text(f"{HEADER}\nccc\tcommon_voice_en_3.mp3\tA dev clip.\t2\t0\t\t\t\ten\t\n")
    (base / "validated.tsv").write_text(
        f"{HEADER}\nddd\tcommon_voice_en_9.mp3\tNot in a split.\t2\t0\t\t\t\ten\t\n"
    )
    return base


def test_import_listed_clips(tmp_path):
    out = prepare_commonvoice(make_language(tmp_path / "en"), tmp_path / "corpus")
    ds = load_corpus(out)
    assert list(ds) == ["train", "validation"]  # no test.tsv in this folder
    train = ds["train"]
    assert train["id"] == ["common_voice_en_1", "common_voice_en_2"]
    assert train["speaker"] == ["aaa", "bbb"]
    assert train["text"][0] == 'He said "hi" to me.'  # quotes kept verbatim
    assert train["gender"] == ["female", ""]
    # mp3 frame counts carry encoder padding: allow one mp3 frame (1152 samples)
    assert train["duration"] == pytest.approx([1.0, 2.0], abs=1152 / SR)
    assert ds["validation"]["audio"] == ["audio/clips/common_voice_en_3.mp3"]
    audio = load_row_audio(out, ds["validation"][0])
    assert abs(len(audio) - 1.5 * SR) <= 1152 and 0.05 < audio.std() < 0.2
    assert not (out / "audio/clips/common_voice_en_9.mp3").exists()  # only listed clips
    assert read_corpus_info(out)["info"]["skipped"] == {
        "missing": 1,
        "unreadable": 0,
        "duplicate": 0,
        "malformed": 0,
    }


def test_short_rows_and_empty_sentences_are_skipped_and_counted(tmp_path, caplog):
    src = make_language(tmp_path / "en")
    (src / "dev.tsv").write_text(
        f"{HEADER}\nccc\tcommon_voice_en_3.mp3\n"  # cut short after the path
        "ddd\tcommon_voice_en_9.mp3\t\t2\t0\t\t\t\ten\t\n"  # no sentence
        "eee\tcommon_voice_en_3.mp3\tA dev clip.\t2\t0\t\t\t\ten\t\n"
    )
    out = prepare_commonvoice(src, tmp_path / "corpus")
    assert load_corpus(out, "validation")["speaker"] == ["eee"]
    assert read_corpus_info(out)["info"]["skipped"]["malformed"] == 2
    assert "skipped 2 entries with a malformed row (e.g. dev.tsv:2, dev.tsv:3)" in caplog.text


def test_unreadable_clip_is_counted(tmp_path):
    src = make_language(tmp_path / "en")
    (src / "clips/common_voice_en_2.mp3").write_bytes(b"\x00" * 100)
    out = prepare_commonvoice(src, tmp_path / "corpus")
    assert load_corpus(out, "train")["id"] == ["common_voice_en_1"]
    assert read_corpus_info(out)["info"]["skipped"]["unreadable"] == 1


def test_not_a_commonvoice_folder(tmp_path):
    (tmp_path / "x").mkdir()
    with pytest.raises(FlexispeechError, match=r"x: not a Common Voice language folder.*clips/.*train\.tsv"):
        prepare_commonvoice(tmp_path / "x", tmp_path / "corpus")
    src = make_language(tmp_path / "en")
    (src / "dev.tsv").write_text("path\tsentence\nx.mp3\thi\n")
    with pytest.raises(FlexispeechError, match=r"dev\.tsv: lacks columns \['client_id'\]"):
        prepare_commonvoice(src, tmp_path / "corpus")


def test_a_corpus_from_another_folder_is_refused_unless_force(tmp_path):
    """Another language folder into the same --out: refused (it replaced the corpus without a
    word, its cached signals with it); with --force rebuilt from the new folder alone."""
    out = prepare_commonvoice(make_language(tmp_path / "en"), tmp_path / "corpus")
    other = make_language(tmp_path / "other")
    (other / "dev.tsv").unlink()
    with pytest.raises(FlexispeechError, match="already holds a corpus built with other options or source"):
        prepare_commonvoice(other, out)
    assert list(load_corpus(out)) == ["train", "validation"]
    prepare_commonvoice(other, out, force=True)
    assert list(load_corpus(out)) == ["train"] and not (out / "audio/clips/common_voice_en_3.mp3").exists()
