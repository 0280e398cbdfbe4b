"""``flexispeech signals CORPUS --model M``: the decoder-confidence proxy and the base WER the
learned router trains on, on a tiny corpus of the speech fixtures and a random tiny Whisper.
The columns are finite where the audio decodes, the base WER is that of the stored base
transcript, and a second run reads the cache instead of decoding again."""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

import pytest
import soundfile as sf

from flexispeech.cli import main
from flexispeech.data.corpus import load_corpus, write_corpus
from flexispeech.evaluation.metrics import english_normalizer, utterance_wer
from flexispeech.signals import proxy
from flexispeech.signals.cache import MODEL_COLUMNS

ARGS = [
    "--splits",
    "test",
    "--model",
    "random:tiny",
    "--audio-ctx",
    "150",
    "--batch-size",
    "2",
]  # a 3-s window


@pytest.fixture
def corpus(tmp_path: Path, assets_dir: Path, transcripts: dict[str, str]) -> Path:
    """The three fixture utterances (all under 3 s) and a file corrupted after the build."""
    root = tmp_path / "corpus"
    (root / "audio").mkdir(parents=True)
    rows = []
    for i, name in enumerate(["fox.wav", "stella.wav", "meeting.wav", "fox.wav"]):
        shutil.copy(assets_dir / name, root / "audio" / f"u{i}.wav")
        rows.append(
            {
                "id": f"u{i}",
                "audio": f"audio/u{i}.wav",
                "text": transcripts[name],
                "duration": sf.info(assets_dir / name).duration,
                "speaker": "s",
                "split": "test",
            }
        )
    write_corpus(rows, root, name="fixtures")
    (root / "audio" / "u3.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" * 4)
    return root


@pytest.fixture
def first_pass_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Batch sizes of every base-model decoding pass (``signals.proxy.first_pass``)."""
    calls: list[int] = []
    real = proxy.first_pass

    def counted(model, processor, batch, *args, **kwargs):
        calls.append(int(batch["input_features"].shape[0]))
        return real(model, processor, batch, *args, **kwargs)

    monkeypatch.setattr(proxy, "first_pass", counted)
    return calls


def dataset_files(corpus: Path) -> dict[str, tuple[int, int]]:
    """Every file of the stored dataset -> (inode, mtime): unchanged if nothing was rewritten."""
    return {
        str(p.relative_to(corpus)): (p.stat().st_ino, p.stat().st_mtime_ns)
        for p in sorted((corpus / "dataset").rglob("*"))
        if p.is_file()
    }


def test_proxy_and_base_wer_are_cached_once(corpus: Path, first_pass_calls: list[int], capsys) -> None:
    assert main(["signals", str(corpus), *ARGS]) == 0
    out = capsys.readouterr().out
    assert "test: proxy and base WER computed" in out and "1 utterance(s) skipped" in out
    assert sorted(first_pass_calls) == [1, 2]  # three decodable rows in batches of 2
    ds = load_corpus(corpus, "test")
    assert set(MODEL_COLUMNS) <= set(ds.column_names)
    normalize = english_normalizer(None)
    for i, row in enumerate(ds):
        if i == 3:  # the corrupt file: no model signals, no transcript
            assert math.isnan(row["signal_proxy"]) and math.isnan(row["base_wer"]) and row["base_hyp"] == ""
            continue
        assert math.isfinite(row["signal_proxy"]) and row["signal_proxy"] > 0  # -log p of the greedy tokens
        assert math.isfinite(row["signal_proxy_entropy"]) and row["signal_proxy_entropy"] > 0
        assert row["base_wer"] == pytest.approx(utterance_wer(row["text"], row["base_hyp"], normalize))
        assert math.isfinite(row["base_wer"]) and row["base_wer"] >= 0

    # a second run reads the cache: no decoding, the stored dataset untouched
    files, values = dataset_files(corpus), {c: list(ds[c]) for c in MODEL_COLUMNS}
    first_pass_calls.clear()
    assert main(["signals", str(corpus), *ARGS]) == 0
    assert "test: proxy and base WER already cached" in capsys.readouterr().out
    assert first_pass_calls == [] and dataset_files(corpus) == files

    # --force decodes again, and the same model gives the same values
    assert main(["signals", str(corpus), *ARGS, "--force"]) == 0
    assert sorted(first_pass_calls) == [1, 2]
    again = load_corpus(corpus, "test")
    for c in MODEL_COLUMNS:
        assert str(list(again[c])) == str(values[c]), c  # str(): NaN equals NaN


def test_rows_longer_than_the_window_get_no_model_signals(corpus: Path, first_pass_calls: list[int]) -> None:
    """--audio-ctx 100 is a 2-s window: every fixture is longer, so nothing is decoded."""
    os.remove(corpus / "audio" / "u3.wav")  # missing now instead of corrupt: still skipped, not fatal
    assert (
        main(["signals", str(corpus), "--splits", "test", "--model", "random:tiny", "--audio-ctx", "100"])
        == 0
    )
    assert first_pass_calls == []
    ds = load_corpus(corpus, "test")
    assert all(math.isnan(v) for v in ds["signal_proxy"]) and all(
        math.isfinite(v) for v in ds["signal_duration"][:3]
    )


@pytest.mark.parametrize("splits", ["tset", "test,tset", "validation"])
def test_a_named_split_the_corpus_lacks_is_an_error(corpus: Path, error_line, capsys, splits: str) -> None:
    """--splits names a split the corpus (only "test") lacks: one line naming it and the
    splits there are, not a run that silently does nothing (or less)."""
    assert main(["signals", str(corpus), "--splits", splits]) == 2
    line = error_line("signals", str(corpus), "its splits: test")
    assert splits.split(",")[-1] in line
    assert main(["signals", str(corpus)]) == 0  # the default: train and validation absent, skipped
    assert "test: audio signals computed" in capsys.readouterr().out


def test_model_none_computes_the_audio_signals_only(corpus: Path, capsys) -> None:
    """`--model none` means no model on a speech corpus too, as on a text task."""
    assert main(["signals", str(corpus), "--model", "none"]) == 0
    assert "proxy" not in capsys.readouterr().out
    assert not set(MODEL_COLUMNS) & set(load_corpus(corpus, "test").column_names)


def test_a_text_task_split_typo_is_an_error(tmp_path: Path, error_line) -> None:
    from data_prep.math import prepare_math

    task = prepare_math(tmp_path / "math", n_train=2, n_validation=1, n_test=1)
    assert main(["signals", str(task), "--model", "none", "--splits", "train,tset"]) == 2
    error_line("signals", "tset", "its splits: train, validation, test")


@pytest.mark.parametrize(
    "option", [["--batch-size", "0"], ["--batch-size", "-2"], ["--audio-ctx", "0"], ["--max-new-tokens", "0"]]
)
def test_counts_must_be_positive(corpus: Path, capsys, option: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:  # argparse: usage and one error line, status 2
        main(["signals", str(corpus), *option])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {option[0]}: expected a whole number >= 1, got {option[1]}" in err
    assert "Traceback" not in err


def test_model_help_documents_text_tasks_and_none(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["signals", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--model none" in out and "text task" in out and "default: the model's full window, 1500" in out
