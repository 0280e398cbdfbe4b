"""The corpus format: write, load, relocate, add columns, errors, interrupted writes."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from interruptions import views_at_every_kill

from flexispeech.data.corpus import (
    REQUIRED_COLUMNS,
    add_columns,
    audio_path,
    load_corpus,
    load_row_audio,
    read_corpus_info,
    write_corpus,
)
from flexispeech.errors import FlexispeechError

SR = 16_000


def _tone(seconds: float, freq: float) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


@pytest.fixture()
def corpus_rows(tmp_path: Path) -> tuple[Path, list[dict]]:
    """Three tiny wavs in tmp_path/audio and their rows (two train, one test)."""
    return tmp_path, audio_rows(tmp_path)


def audio_rows(root: Path) -> list[dict]:
    """Write three tiny wavs into ``root/audio/a``; their rows (two train, one test)."""
    (root / "audio" / "a").mkdir(parents=True)
    specs = [("u1", 0.5, 440.0, "train"), ("u2", 0.25, 220.0, "train"), ("u3", 1.0, 330.0, "test")]
    rows = []
    for uid, secs, freq, split in specs:
        rel = f"audio/a/{uid}.wav"
        sf.write(root / rel, _tone(secs, freq), SR, subtype="PCM_16")
        rows.append(
            {
                "id": uid,
                "audio": rel,
                "text": f"say {uid}",
                "duration": secs,
                "speaker": "s1",
                "split": split,
                "snr_db": math.nan if uid != "u2" else 10.0,
                "voice": "v",
            }
        )
    return rows


def test_write_and_load_roundtrip(corpus_rows: tuple[Path, list[dict]]) -> None:
    root, rows = corpus_rows
    write_corpus(rows, root, name="toy", info={"seed": 3})
    info = json.loads((root / "corpus.json").read_text())
    assert info["name"] == "toy"
    assert info["splits"] == {"train": 2, "test": 1}
    assert info["hours"] == pytest.approx(1.75 / 3600, abs=1e-4)
    assert info["info"] == {"seed": 3}
    dd = load_corpus(root)
    assert list(dd.keys()) == ["train", "test"]
    train = load_corpus(root, "train")
    assert train["id"] == ["u1", "u2"]
    assert set(REQUIRED_COLUMNS) <= set(train.column_names)
    assert math.isnan(train[0]["snr_db"]) and train[1]["snr_db"] == 10.0
    samples = load_row_audio(root, train[0])
    assert samples.dtype == np.float32 and samples.shape == (8000,)
    np.testing.assert_allclose(samples, _tone(0.5, 440.0), atol=1e-4)


def test_corpus_is_relocatable(corpus_rows: tuple[Path, list[dict]], tmp_path_factory) -> None:
    root, rows = corpus_rows
    write_corpus(rows, root, name="toy")
    moved = tmp_path_factory.mktemp("moved") / "corpus"
    shutil.copytree(root, moved)
    shutil.rmtree(root)
    row = load_corpus(moved, "test")[0]
    assert audio_path(moved, row) == moved / "audio/a/u3.wav"
    assert load_row_audio(moved, row).shape == (16000,)


def test_add_columns_caches_signals(corpus_rows: tuple[Path, list[dict]]) -> None:
    root, rows = corpus_rows
    write_corpus(rows, root, name="toy")
    add_columns(root, "train", {"snr_est": [12.5, 3.0]})
    train = load_corpus(root, "train")
    assert train["snr_est"] == [12.5, 3.0]
    add_columns(root, "train", {"snr_est": [1.0, 2.0]})  # replacing works too
    assert load_corpus(root, "train")["snr_est"] == [1.0, 2.0]
    assert "snr_est" not in load_corpus(root, "test").column_names
    assert load_corpus(root, "test")["id"] == ["u3"]
    with pytest.raises(FlexispeechError, match="has 1 values"):
        add_columns(root, "train", {"x": [1]})
    with pytest.raises(FlexispeechError, match="required"):
        add_columns(root, "train", {"text": ["a", "b"]})


def test_a_reader_never_opens_the_corpus_during_a_column_swap(corpus_rows: tuple[Path, list[dict]]) -> None:
    """A recipe trains on a corpus while stage 1 adds signal columns to it: a reader opening
    the corpus waits while a writer holds the swap, then sees the new columns; the swap
    itself takes the lock only around its renames."""
    import threading

    from flexispeech import atomic

    root, rows = corpus_rows
    write_corpus(rows, root, name="toy")
    opened: list[list[str]] = []
    reader = threading.Thread(target=lambda: opened.append(load_corpus(root, "train").column_names))
    with atomic.dir_lock(root, exclusive=True):  # a writer between its two renames
        reader.start()
        reader.join(timeout=0.5)
        assert reader.is_alive() and not opened  # the reader waits for the swap
    reader.join(timeout=10)
    assert opened and "snr_est" not in opened[0]

    held: list[bool] = []
    rename = atomic._rename

    def probing_rename(src: Path, dst: Path) -> None:
        # during the swap a reader's shared lock cannot be had
        import fcntl

        with open(root / atomic.LOCK_NAME, "a+b") as handle:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
                held.append(False)
            except BlockingIOError:
                held.append(True)
        rename(src, dst)

    atomic._rename = probing_rename
    try:
        add_columns(root, "train", {"snr_est": [12.5, 3.0]})
    finally:
        atomic._rename = rename
    assert held == [True, True]  # both renames of the swap under the exclusive lock
    assert load_corpus(root, "train")["snr_est"] == [12.5, 3.0]


def test_errors_name_the_problem(corpus_rows: tuple[Path, list[dict]], tmp_path_factory) -> None:
    root, rows = corpus_rows
    with pytest.raises(FlexispeechError, match="not a flexispeech corpus"):
        load_corpus(root)
    write_corpus(rows, root, name="toy")
    with pytest.raises(FlexispeechError, match="available: train, test"):
        load_corpus(root, "validation")
    bad = dict(rows[0], audio=str(root / rows[0]["audio"]))
    with pytest.raises(FlexispeechError, match="absolute"):
        write_corpus([bad], tmp_path_factory.mktemp("bad"), name="x")
    with pytest.raises(FlexispeechError, match="lacks columns"):
        write_corpus([{"id": "x"}], root, name="x")
    with pytest.raises(FlexispeechError, match="does not exist"):
        write_corpus([dict(rows[0], audio="audio/none.wav")], root, name="x")


def corpus_view(root: Path) -> str:
    """What a reader of the corpus sees (corpus.json and every row, as JSON: NaN equals
    NaN there), or "incomplete" when it is not a complete corpus."""
    try:
        info = read_corpus_info(root)
        rows = {split: load_corpus(root, split).to_list() for split in info["splits"]}
    except FlexispeechError:
        return "incomplete"
    return json.dumps([info, rows], sort_keys=True)


def test_add_columns_killed_at_every_step_loads_old_or_new(tmp_path: Path) -> None:
    def make_old(root: Path) -> None:
        write_corpus(audio_rows(root), root, name="toy")
        add_columns(root, "train", {"snr_est": [1.0, 2.0]})

    old, new, kills = views_at_every_kill(
        tmp_path,
        make_old,
        lambda root: add_columns(root, "train", {"snr_est": [3.0, 4.0], "proxy": [0.5, 0.25]}),
        corpus_view,
    )
    assert '"proxy": 0.25' in new and '"proxy"' not in old
    assert kills[0][1] == old and all(view in (old, new) for _, view in kills), "a mix of old and new rows"
    # Killed between the two renames of dataset/: the reader falls back to dataset.old.
    between = [view for steps, view in kills if steps[-1:] == ["rename dataset -> dataset.old"]]
    assert between == [old]


def test_write_corpus_killed_at_every_step_is_new_or_incomplete(tmp_path: Path) -> None:
    """A rewrite (``prepare --force``) removes corpus.json first: killed, the corpus reads
    as incomplete (re-run the build), never as old metadata over new rows."""

    def make_old(root: Path) -> None:
        write_corpus(audio_rows(root), root, name="old")

    def rewrite(root: Path) -> None:
        rows = load_corpus(root, "train").to_list() + load_corpus(root, "test").to_list()
        write_corpus([dict(r, text=r["text"].upper()) for r in rows], root, name="new")

    old, new, kills = views_at_every_kill(tmp_path, make_old, rewrite, corpus_view)
    assert old != "incomplete" and '"SAY U1"' in new
    assert {view for _, view in kills} <= {"incomplete", new} and "incomplete" in {view for _, view in kills}
