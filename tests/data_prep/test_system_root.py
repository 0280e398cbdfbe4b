"""FLEXISPEECH_SYSTEM_ROOT: the Debian packages' data read from an unpacked tree (``dpkg -x``).

Each test points the variable at a tiny fake tree after ``data_prep`` is imported, so a
path read at import time (rather than at call time) would miss it and fail here. The fake
trees are written through ``root / "usr/..."``, never through the code under test: a broken
``system_path`` would otherwise write the fakes over the real packages' files under ``/``.
"""

from __future__ import annotations

import gzip
import os
import re
from pathlib import Path

import pytest

from data_prep import realspeech, sentences, tts
from data_prep.system_root import SYSTEM_ROOT_ENV, system_path, system_root
from flexispeech.data.corpus import load_corpus, read_corpus_info
from flexispeech.errors import FlexispeechError

ASSETS = Path(__file__).resolve().parents[1] / "assets"
FORTUNES = "A fool and his money are soon parted.\n%\nWarning: 42 tokens here.\n%\nThe cat sat.\n"


def _write(path: Path, text: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty system root that FLEXISPEECH_SYSTEM_ROOT points at."""
    root = tmp_path / "root"
    root.mkdir()
    monkeypatch.setenv(SYSTEM_ROOT_ENV, str(root))
    return root


def test_system_path_follows_the_variable(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert system_root() == root
    assert system_path("/usr/share/mbrola") == root / "usr/share/mbrola"
    monkeypatch.delenv(SYSTEM_ROOT_ENV)
    assert system_path("/usr/share/mbrola") == Path("/usr/share/mbrola")
    monkeypatch.setenv(SYSTEM_ROOT_ENV, "")  # set but empty: the default, not the current directory
    assert system_root() == Path("/")


def test_sentence_pools_read_the_fortunes_under_the_root(root: Path) -> None:
    _write(root / "usr/share/games/fortunes/fake", FORTUNES)
    _write(root / "usr/share/games/fortunes/fake.dat", "index, not text")
    _write(
        root / "usr/share/dict/words", "\n".join("a fool and his money are soon parted the cat sat".split())
    )
    assert sentences.fortune_sentences() == ["A fool and his money are soon parted.", "The cat sat."]
    pools = sentences.sentence_pools(n_generated=5)
    assert {s for pool in pools.values() for s in pool} >= {"The cat sat."}


def test_no_fortunes_under_an_empty_root(root: Path) -> None:
    # this machine may have the packages under /: an empty root must not fall back to them
    with pytest.warns(UserWarning, match=re.escape(str(root))):
        assert sentences.fortune_sentences() == []


def test_installed_voices_look_under_the_root(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bin_dir = root / "bin"
    for exe in ("espeak-ng", "mbrola", "festival"):  # executables still come from PATH
        _write(bin_dir / exe, "#!/bin/sh\n").chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    _write(root / "usr/share/mbrola/us2/us2")
    _write(root / "usr/share/mbrola/de4/de4")
    (root / "usr/share/festival/voices/english/ked_diphone").mkdir(parents=True)
    voices = {engine: [v.name for v in vs] for engine, vs in tts.installed_voices().items()}
    assert voices["mbrola"] == ["mb-us2"]
    assert voices["mbrola_accented"] == ["mb-de4-en"]
    assert voices["festival"] == ["ked_diphone"]
    assert "flite" not in voices and "pico" not in voices


def test_realspeech_default_prefix_is_the_root(root: Path, tmp_path: Path) -> None:
    with pytest.raises(FlexispeechError, match="packages not installed: asterisk-core-sounds-en "):
        realspeech.prepare_realspeech(tmp_path / "empty", ["asterisk"])
    audio = root / realspeech.ASTERISK_AUDIO / "digits/1.wav"
    audio.parent.mkdir(parents=True)
    os.link(ASSETS / "fox.wav", audio)
    (root / realspeech.ASTERISK_LIST).parent.mkdir(parents=True)
    with gzip.open(root / realspeech.ASTERISK_LIST, "wt", encoding="utf-8") as f:
        f.write("digits/1: one\n")
    out = realspeech.prepare_realspeech(tmp_path / "corpus", ["asterisk"])
    assert read_corpus_info(out)["info"]["prefix"] == str(root.resolve())
    assert [r["text"] for r in load_corpus(out, "test")] == ["one"]
