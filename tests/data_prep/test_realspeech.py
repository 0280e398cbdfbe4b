"""Real-speech importer on a fake install tree (the Debian packages' layout under a prefix).

The fake tree holds the fixtures of tests/assets in place of the packages' recordings, so
these tests need none of the packages; the last test (slow) uses them if apt installed them.
"""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from data_prep.realspeech import (
    ASTERISK_AUDIO,
    ASTERISK_LIST,
    GOFORWARD_TEXT,
    POCKETSPHINX_DATA,
    clean_prompt_text,
    prepare_realspeech,
    read_sphinx_transcription,
)
from data_prep.system_root import system_root
from flexispeech.data.corpus import load_corpus, load_row_audio, read_corpus_info
from flexispeech.errors import FlexispeechError

ASSETS = Path(__file__).resolve().parents[1] / "assets"
PROMPTS = """; Core Asterisk Sounds in English

digits/1: one
letters/at: at [@]
beep: [this is a simple beep tone]
demo-keys: Please enter keywords separated by * and then press the pound key.
vm-intro: Please leave your message after the tone.  (simple tone sound plays)
gone: This prompt has no recording.
"""
ALL_PACKAGES = "asterisk-core-sounds-en asterisk-core-sounds-en-wav pocketsphinx-testdata"


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    os.link(src, dst)


def make_asterisk(prefix: Path) -> None:
    """The two Asterisk packages: WAV prompts and the gzipped prompt list."""
    audio = prefix / ASTERISK_AUDIO
    _link(ASSETS / "fox.wav", audio / "digits/1.wav")
    _link(ASSETS / "stella.wav", audio / "letters/at.wav")
    _link(ASSETS / "stella.wav", audio / "vm-intro.wav")
    _link(ASSETS / "fox.wav", audio / "beep.wav")
    _link(ASSETS / "fox.wav", audio / "demo-keys.wav")
    (prefix / ASTERISK_LIST).parent.mkdir(parents=True)
    with gzip.open(prefix / ASTERISK_LIST, "wt", encoding="utf-8") as f:
        f.write(PROMPTS)


def make_pocketsphinx(prefix: Path) -> None:
    """pocketsphinx-testdata: a Sphinx transcription beside its WAV, and headerless PCM."""
    data = prefix / POCKETSPHINX_DATA
    _link(ASSETS / "stella.wav", data / "librivox/stella_0001.wav")
    (data / "librivox/transcription").write_text(
        "<s> please call stella and ask her to bring these things </s> (stella_0001)\n"
        "<s> no recording for this one </s> (stella_0002)\n"
    )
    pcm, sr = sf.read(ASSETS / "fox.wav", dtype="int16")
    assert sr == 16_000
    pcm.astype("<i2").tofile(data / "goforward.raw")


def test_fake_tree_both_sources(tmp_path):
    prefix = tmp_path / "root"
    make_asterisk(prefix)
    make_pocketsphinx(prefix)
    out = prepare_realspeech(tmp_path / "corpus", prefix=prefix)
    info = read_corpus_info(out)
    assert info["splits"] == {"test": 5}  # only a test split
    rows = {r["id"]: r for r in load_corpus(out, "test")}
    assert {k: r["text"] for k, r in rows.items()} == {
        "asterisk/digits/1": "one",
        "asterisk/letters/at": "at",  # the annotation "[@]" is not spoken
        "asterisk/vm-intro": "Please leave your message after the tone.",
        "pocketsphinx/librivox/stella_0001": "please call stella and ask her to bring these things",
        "pocketsphinx/goforward": GOFORWARD_TEXT,
    }
    at = rows["asterisk/letters/at"]
    assert (at["source"], at["speaker"], at["gender"], at["category"], at["package"]) == (
        "asterisk",
        "asterisk-allison",
        "F",
        "letters",
        "asterisk-core-sounds-en-wav",
    )
    assert at["licence"].startswith("CC-BY-SA-3.0")
    assert rows["asterisk/vm-intro"]["category"] == "prompts"
    go = rows["pocketsphinx/goforward"]
    assert (go["speaker"], go["category"], go["package"], go["sample_rate"], go["channel"]) == (
        "pocketsphinx-goforward",
        "goforward",
        "pocketsphinx-testdata",
        16_000,
        "wideband",
    )
    assert go["licence"].startswith("BSD-2")
    assert {r["split"] for r in rows.values()} == {"test"}
    assert at["duration"] == pytest.approx(sf.info(ASSETS / "stella.wav").duration)
    # the headerless PCM became a WAV with the same samples
    assert go["audio"] == "audio/pocketsphinx/goforward.wav"
    fox, _ = sf.read(ASSETS / "fox.wav", dtype="float32")
    np.testing.assert_allclose(load_row_audio(out, go), fox, atol=1e-4)
    assert go["duration"] == pytest.approx(len(fox) / 16_000)
    assert info["info"]["sources"] == ["asterisk", "pocketsphinx"]
    assert info["info"]["skipped"] == {
        "asterisk": {"non-speech": 1, "spoken-symbol": 1, "missing": 1, "unreadable": 0},
        "pocketsphinx": {"missing": 2, "unreadable": 0},  # stella_0002 and the cards folder
    }


def test_missing_source_is_skipped_then_picked_up_on_rerun(tmp_path, caplog):
    prefix = tmp_path / "root"
    make_asterisk(prefix)
    out = prepare_realspeech(tmp_path / "corpus", prefix=prefix)
    assert "packages not installed: pocketsphinx-testdata" in caplog.text
    assert "apt-get install pocketsphinx-testdata" in caplog.text
    assert read_corpus_info(out)["info"]["sources_missing"] == ["pocketsphinx"]
    assert read_corpus_info(out)["splits"] == {"test": 3}
    marker = out / "corpus.json"
    before = marker.stat().st_mtime_ns
    prepare_realspeech(out, prefix=prefix)  # complete, same sources: kept as it is
    assert marker.stat().st_mtime_ns == before
    make_pocketsphinx(prefix)  # the package is installed now: the next run rebuilds
    prepare_realspeech(out, prefix=prefix)
    assert read_corpus_info(out)["splits"] == {"test": 5}
    assert read_corpus_info(out)["info"]["sources_missing"] == []


def test_no_package_installed_says_what_to_install(tmp_path):
    empty = tmp_path / "root"
    empty.mkdir()
    with pytest.raises(
        FlexispeechError,
        match=f"packages not installed: {ALL_PACKAGES}; install with `apt-get install {ALL_PACKAGES}`",
    ):
        prepare_realspeech(tmp_path / "corpus", prefix=empty)
    make_pocketsphinx(empty)
    with pytest.raises(
        FlexispeechError, match="packages not installed: asterisk-core-sounds-en asterisk-core"
    ):
        prepare_realspeech(tmp_path / "corpus", ["asterisk", "pocketsphinx"], prefix=empty)
    with pytest.raises(FlexispeechError, match="unknown realspeech sources"):
        prepare_realspeech(tmp_path / "corpus", ["timit"], prefix=empty)
    # the command line prints the message as one line, without a traceback
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "flexispeech",
            "prepare",
            "realspeech",
            "--out",
            str(tmp_path / "c"),
            "--prefix",
            str(tmp_path / "nowhere"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if "error" in line]
    assert errors == [
        f"flexispeech prepare: error: realspeech: packages not installed: {ALL_PACKAGES}; "
        f"install with `apt-get install {ALL_PACKAGES}` (Debian/Ubuntu, as root) or "
        "`sh data_prep/install_system_deps.sh`"
    ]
    assert "Traceback" not in proc.stderr


def test_transcript_parsing(tmp_path):
    assert clean_prompt_text(" at [@]") == "at"
    assert clean_prompt_text('IAX (note: does not say "2")') == "IAX"
    assert clean_prompt_text("(10 seconds of silence)") is None
    assert clean_prompt_text("<beep ascending>") is None
    assert clean_prompt_text("press # to exit") is None
    path = tmp_path / "transcription"
    path.write_text("<s> ten of clubs  </s> (001)\n\n<s> five five </s> (004)\n")
    assert read_sphinx_transcription(path) == {"001": "ten of clubs", "004": "five five"}
    path.write_text("<s> no id here </s>\n")
    with pytest.raises(FlexispeechError, match=r"transcription:1: expected '<s> text </s> \(id\)'"):
        read_sphinx_transcription(path)


@pytest.mark.slow
@pytest.mark.skipif(
    not (system_root() / ASTERISK_LIST).is_file() or not (system_root() / POCKETSPHINX_DATA).is_dir(),
    reason="needs the Debian packages: sh data_prep/install_system_deps.sh",
)
def test_installed_packages(tmp_path):
    out = prepare_realspeech(tmp_path / "corpus")
    rows = list(load_corpus(out, "test"))
    by_source = {s: [r for r in rows if r["source"] == s] for s in ("asterisk", "pocketsphinx")}
    assert len(by_source["asterisk"]) >= 500 and len(by_source["pocketsphinx"]) == 11
    librivox = {r["id"]: r["text"] for r in by_source["pocketsphinx"] if r["category"] == "librivox"}
    assert librivox["pocketsphinx/librivox/sense_and_sensibility_01_austen_64kb-0880"] == (
        "he was not an ill disposed young man"
    )
    assert all(r["duration"] > 0.2 and r["text"].strip() for r in rows)
    assert {r["sample_rate"] for r in by_source["asterisk"]} == {8000}
    assert {r["channel"] for r in by_source["asterisk"]} == {"telephone"}
    go = next(r for r in rows if r["id"] == "pocketsphinx/goforward")
    assert load_row_audio(out, go).shape == (int(round(go["duration"] * 16_000)),)
