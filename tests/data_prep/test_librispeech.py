"""LibriSpeech importer on a tiny tree in the released layout (tones instead of speech)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from data_prep.librispeech import prepare_librispeech
from flexispeech.data.corpus import load_corpus, load_row_audio, read_corpus_info
from flexispeech.errors import FlexispeechError

SR = 16_000
# (subset, speaker, chapter, utterance index, seconds)
UTTS = [
    ("train-clean-100", "19", "198", 0, 0.5),
    ("train-clean-100", "19", "198", 1, 0.75),
    ("train-clean-100", "26", "495", 0, 1.0),
    ("dev-clean", "84", "121123", 0, 0.25),
    ("test-clean", "121", "121726", 0, 0.3),
]


def _tone(seconds: float, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def make_tree(base: Path) -> Path:
    root = base / "LibriSpeech"
    lines: dict[Path, list[str]] = {}
    for subset, spk, ch, i, seconds in UTTS:
        chapter_dir = root / subset / spk / ch
        chapter_dir.mkdir(parents=True, exist_ok=True)
        utt = f"{spk}-{ch}-{i:04d}"
        sf.write(chapter_dir / f"{utt}.flac", _tone(seconds), SR)
        lines.setdefault(chapter_dir / f"{spk}-{ch}.trans.txt", []).append(f"{utt} HELLO WORLD NUMBER {i}")
    for path, chapter_lines in lines.items():
        path.write_text("\n".join(chapter_lines) + "\n")
    (root / "SPEAKERS.TXT").write_text(
        "; ID  |SEX| SUBSET           |MINUTES| NAME\n19   | F | train-clean-100  | 25.19 | Kara\n"
        "26   | M | train-clean-100  | 25.08 | Denny\n84   | F | dev-clean        |  8.02 | Christie\n"
    )
    return base


def test_import_rows_splits_durations_speakers(tmp_path):
    out = prepare_librispeech(make_tree(tmp_path / "src"), tmp_path / "corpus")
    ds = load_corpus(out)
    assert list(ds) == ["train", "validation", "test"]
    assert [len(ds[s]) for s in ds] == [3, 1, 1]
    train = sorted(ds["train"], key=lambda r: r["id"])
    assert [r["id"] for r in train] == ["19-198-0000", "19-198-0001", "26-495-0000"]
    assert [r["duration"] for r in train] == pytest.approx([0.5, 0.75, 1.0])
    assert [r["speaker"] for r in train] == ["19", "19", "26"]
    assert [r["gender"] for r in train] == ["F", "F", "M"]
    assert train[1]["text"] == "HELLO WORLD NUMBER 1"
    assert train[0]["audio"] == "audio/train-clean-100/19/198/19-198-0000.flac"
    assert ds["test"][0]["gender"] == ""  # speaker 121 not in SPEAKERS.TXT
    audio = load_row_audio(out, train[2])
    assert audio.shape == (SR,) and np.abs(audio).max() == pytest.approx(0.3, abs=1e-3)
    assert read_corpus_info(out)["info"]["skipped"] == {"missing": 0, "unreadable": 0}


def test_subset_selection_and_rerun(tmp_path):
    src = make_tree(tmp_path / "src") / "LibriSpeech"  # the LibriSpeech folder itself also works
    out = prepare_librispeech(src, tmp_path / "corpus", subsets=["dev-clean"])
    assert list(load_corpus(out)) == ["validation"]
    marker = out / "corpus.json"
    mtime = marker.stat().st_mtime_ns
    prepare_librispeech(src, out, subsets=["dev-clean"])
    assert marker.stat().st_mtime_ns == mtime  # complete: skipped
    prepare_librispeech(src, out, subsets=["dev-clean"], force=True)
    assert marker.stat().st_mtime_ns != mtime


def test_missing_flac_is_counted_and_skipped(tmp_path):
    src = make_tree(tmp_path / "src")
    (src / "LibriSpeech/train-clean-100/19/198/19-198-0001.flac").unlink()
    (src / "LibriSpeech/train-clean-100/26/495/26-495-0000.flac").write_bytes(b"not audio")
    out = prepare_librispeech(src, tmp_path / "corpus")
    assert load_corpus(out, "train")["id"] == ["19-198-0000"]
    assert read_corpus_info(out)["info"]["skipped"] == {"missing": 1, "unreadable": 1}


def test_not_a_librispeech_tree(tmp_path):
    (tmp_path / "something").mkdir()
    with pytest.raises(
        FlexispeechError, match=r"something: not a LibriSpeech tree.*train-clean-100.*dev-clean"
    ):
        prepare_librispeech(tmp_path / "something", tmp_path / "corpus")
    src = make_tree(tmp_path / "src")
    with pytest.raises(FlexispeechError, match=r"subsets \['test-other'\] not found"):
        prepare_librispeech(src, tmp_path / "corpus", subsets=["test-other"])
    with pytest.raises(FlexispeechError, match="unknown LibriSpeech subsets"):
        prepare_librispeech(src, tmp_path / "corpus", subsets=["train-clean-1000"])


def test_hub_path_with_decode_false(tmp_path, monkeypatch):
    """The hub option, with load_dataset replaced by a local dataset of the hub's columns."""
    import datasets

    flac = tmp_path / "x.flac"
    sf.write(flac, _tone(0.5), SR)
    calls = []

    def fake_load_dataset(hub_id, config, split):
        calls.append((hub_id, config, split))
        return datasets.Dataset.from_list(
            [
                {
                    "file": "x.flac",
                    "audio": {"bytes": flac.read_bytes(), "path": "x.flac"},
                    "text": "A TONE",
                    "speaker_id": 7,
                    "chapter_id": 8,
                    "id": "7-8-0000",
                }
            ]
        ).cast_column("audio", datasets.Audio(decode=False))

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    out = prepare_librispeech(None, tmp_path / "corpus", ["test-other"], hub_id="openslr/librispeech_asr")
    assert calls == [("openslr/librispeech_asr", "other", "test")]
    row = load_corpus(out, "test")[0]
    assert (row["id"], row["speaker"], row["duration"]) == ("7-8-0000", "7", 0.5)
    assert load_row_audio(out, row).shape == (SR // 2,)
