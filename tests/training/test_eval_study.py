"""The measurement side of a study: one encoder window shared by train, eval and transcribe;
eval on a corpus without cached signals; paired speech comparisons against a baseline."""

from __future__ import annotations

import json
import shutil

import pytest
from test_train_eval import config, corpus  # noqa: F401  (module-scoped fixture: a tiny corpus)

from flexispeech.cli import main
from flexispeech.data.corpus import load_corpus, write_corpus
from flexispeech.errors import FlexispeechError
from flexispeech.evaluation.speech_paired import speech_paired_table
from flexispeech.models.whisper import encoder_positions
from flexispeech.training.loop import train


@pytest.fixture(scope="module")
def adapter(corpus, tmp_path_factory):  # noqa: F811
    """A threshold-routed adapter trained with a 2-s window (audio_ctx 100)."""
    out = tmp_path_factory.mktemp("flexi") / "threshold"
    return train(config(corpus, out, "threshold"), progress=False)


def _results(path) -> dict:
    return json.loads((path / "results.json").read_text())


def test_eval_defaults_to_the_adapters_window_and_warns(corpus, adapter, tmp_path, capsys) -> None:  # noqa: F811
    assert main(["eval", "--data", str(corpus), "--adapter", str(adapter), "--out", str(tmp_path / "a")]) == 0
    assert "warning" not in capsys.readouterr().err
    assert _results(tmp_path / "a")["audio_ctx"] == 100
    assert (
        main(
            [
                "eval",
                "--data",
                str(corpus),
                "--adapter",
                str(adapter),
                "--audio-ctx",
                "150",
                "--out",
                str(tmp_path / "b"),
            ]
        )
        == 0
    )
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning")]
    assert err == [
        "warning: eval: --audio-ctx 150 (3 s) differs from the window the adapter was trained with (100 = 2 s)"
    ]
    assert _results(tmp_path / "b")["audio_ctx"] == 150


def test_eval_scores_the_whole_split_whatever_the_window(corpus, tmp_path) -> None:  # noqa: F811
    """A 0.8-s window cannot hear the test clips of 0.6-1.1 s whole; they are scored anyway."""
    assert (
        main(
            [
                "eval",
                "--data",
                str(corpus),
                "--model",
                "random:tiny",
                "--audio-ctx",
                "40",
                "--max-new-tokens",
                "3",
                "--out",
                str(tmp_path / "e"),
            ]
        )
        == 0
    )
    res = _results(tmp_path / "e")
    assert res["n"] == 6 and res["audio_ctx"] == 40 and max(u["duration"] for u in res["utterances"]) > 0.8
    assert (
        main(
            [
                "eval",
                "--data",
                str(corpus),
                "--model",
                "random:tiny",
                "--max-new-tokens",
                "3",
                "--out",
                str(tmp_path / "f"),
            ]
        )
        == 0
    )
    assert _results(tmp_path / "f")["audio_ctx"] == 1500  # a base model: the full 30 s


def test_transcribe_serves_at_the_adapters_window(adapter, assets_dir, capsys) -> None:
    from flexispeech.streaming.transcriber import Transcriber

    assert encoder_positions(Transcriber("random:tiny", adapter=adapter).model) == 100
    assert "warning" not in capsys.readouterr().err
    assert encoder_positions(Transcriber("random:tiny", adapter=adapter, audio_ctx=150).model) == 150
    assert "warning: transcribe: --audio-ctx 150" in capsys.readouterr().err
    assert encoder_positions(Transcriber("random:tiny").model) == 1500


def test_stream_window_defaults_to_the_adapters(adapter, capsys) -> None:
    from flexispeech.commands.stream import stream_window

    assert stream_window(None, str(adapter)) == "100"
    assert stream_window(None, None) == "1500"
    assert stream_window("250", None) == "250"
    assert capsys.readouterr().err == ""
    assert stream_window("250", str(adapter)) == "250"
    assert "warning: stream: --audio-ctx 250" in capsys.readouterr().err


def _bare(corpus, root):  # noqa: F811
    """The corpus's test split without any cached signal column."""
    rows = [
        {k: v for k, v in r.items() if not k.startswith("signal_")}
        for r in load_corpus(corpus, "test").to_list()
    ]
    shutil.copytree(corpus / "audio", root / "audio")
    return write_corpus(rows, root, name="bare")


def test_eval_computes_signals_a_corpus_has_not_cached(corpus, adapter, tmp_path, capsys) -> None:  # noqa: F811
    bare = _bare(corpus, tmp_path / "bare")
    assert main(["eval", "--data", str(bare), "--adapter", str(adapter), "--out", str(tmp_path / "e")]) == 0
    out = capsys.readouterr().out
    assert (
        "has no cached signals ['proxy', 'snr_db']" in out
        and f"`flexispeech signals {bare}` caches them" in out
    )
    res = _results(tmp_path / "e")
    assert res["n"] == 6 and sum(res["rank_histogram"].values()) == 6
    assert all(set(u["signals"]) >= {"proxy", "snr_db"} for u in res["utterances"])


def test_eval_at_a_fixed_rank_on_a_corpus_without_signals(corpus, adapter, tmp_path) -> None:  # noqa: F811
    """A router that reads no signal (a fixed rank, static LoRA) on a corpus with none cached
    (real recordings): every row is decoded at that rank and gets its audio signals, so the
    results break down by SNR as on the synthetic corpus."""
    bare = _bare(corpus, tmp_path / "bare")
    assert (
        main(
            [
                "eval",
                "--data",
                str(bare),
                "--adapter",
                str(adapter),
                "--rank",
                "2",
                "--out",
                str(tmp_path / "e"),
            ]
        )
        == 0
    )
    res = _results(tmp_path / "e")
    assert res["n"] == 6 and res["rank_histogram"] == {"2": 6}
    assert all(set(u["signals"]) == {"duration", "snr_db", "speech_activity"} for u in res["utterances"])
    assert sum(n for h in res["ranks_by_snr"].values() for n in h.values()) == 6


def test_eval_reports_ranks_per_snr_bucket(corpus, adapter, tmp_path) -> None:  # noqa: F811
    assert main(["eval", "--data", str(corpus), "--adapter", str(adapter), "--out", str(tmp_path / "e")]) == 0
    res = _results(tmp_path / "e")
    per_bucket = res["ranks_by_snr"]
    assert sum(n for h in per_bucket.values() for n in h.values()) == 6
    assert {r: sum(h.get(r, 0) for h in per_bucket.values()) for r in res["rank_histogram"]} == res[
        "rank_histogram"
    ]
    assert "## Ranks by SNR" in (tmp_path / "e" / "results.md").read_text()


def _utt(i: int, errors: int, words: int = 10, snr=None, seen=True) -> dict:
    channel = "telephone" if i == 3 else "wideband"
    return {
        "id": f"u{i}",
        "errors": errors,
        "ref_words": words,
        "snr_db": snr,
        "seen_voice": seen,
        "channel": channel,
    }


def _speech(name: str, errors: list[int], data: str = "corpus/synthetic", window: int = 1500) -> dict:
    snrs = [None, None, 25.0, 2.0]
    return {
        "name": name,
        "data": data,
        "split": "test",
        "audio_ctx": window,
        "utterances": [_utt(i, e, snr=snrs[i], seen=i % 2 == 0) for i, e in enumerate(errors)],
    }


def test_speech_paired_table_counts_and_wer_gap() -> None:
    base, run = _speech("base", [2, 4, 1, 5]), _speech("flexi", [1, 4, 3, 2])
    table = speech_paired_table([base, run], "base")
    rows = {
        line.split("|")[2].strip(): [c.strip() for c in line.split("|")[1:-1]]
        for line in table.splitlines()
        if line.startswith("| flexi")
    }
    # all: 12 -> 10 errors over 40 words, -5 points; better on u0 and u3, worse on u2, same on u1
    assert rows["all"][2:10] == ["4", "30.0", "25.0", "-5.0", rows["all"][6], "2", "1", "1"]
    assert rows["SNR clean"][2:6] == ["2", "30.0", "25.0", "-5.0"]  # u0, u1
    assert rows["SNR <5 dB"][2:9] == ["1", "50.0", "20.0", "-30.0", "–", "1", "0"]
    assert rows["unseen voices"][2:5] == ["2", "45.0", "30.0"]  # u1, u3
    assert rows["wideband channel"][2:5] == ["3", "23.3", "26.7"]  # u0-u2: 7 -> 8 errors
    assert rows["telephone channel"][2:6] == ["1", "50.0", "20.0", "-30.0"]  # u3
    assert "synthetic test, 30 s window: paired against base" in table


def test_a_routed_run_is_also_compared_per_served_rank() -> None:
    """Rows per rank the compared run served: where routing gains or loses (the rank is the
    run's, not the baseline's); a run at one rank gets none."""
    base, run = _speech("static_r16", [2, 4, 1, 5]), _speech("flexi", [1, 4, 3, 2])
    for u, r in zip(run["utterances"], [0, 4, 0, 16]):
        u["rank"] = r
    for u in base["utterances"]:
        u["rank"] = 16
    table = speech_paired_table([base, run], "static_r16")
    rows = {
        line.split("|")[2].strip(): [c.strip() for c in line.split("|")[1:-1]]
        for line in table.splitlines()
        if line.startswith("| flexi")
    }
    assert rows["served rank 0"][2:6] == ["2", "15.0", "20.0", "+5.0"]  # u0 (2 -> 1), u2 (1 -> 3)
    assert rows["served rank 4"][2:6] == ["1", "40.0", "40.0", "+0.0"]
    assert rows["served rank 16"][2:6] == ["1", "50.0", "20.0", "-30.0"]
    reverse = speech_paired_table([base, run], "flexi")
    assert "served rank" not in reverse  # static_r16 served one rank


def test_speech_pairs_within_each_corpus_and_window() -> None:
    runs = [
        _speech("base", [2, 4, 1, 5]),
        _speech("flexi", [1, 4, 3, 2]),
        _speech("base", [0, 0, 0, 0], data="corpus/real"),
        _speech("flexi", [1, 1, 1, 1], data="corpus/real"),
        _speech("flexi", [1, 1, 1, 1], window=500),
    ]
    table = speech_paired_table(runs, "base")
    assert (
        "real test, 30 s window: paired against base" in table
        and "| flexi | all | 4 | 0.0 | 10.0 | +10.0 |" in table
    )
    assert "synthetic test, 10 s window: no run named 'base'" in table
    with pytest.raises(FlexispeechError, match="not scored on the same utterances"):
        speech_paired_table([_speech("base", [1, 2, 3, 4]), _speech("flexi", [1, 2, 3])], "base")
    with pytest.raises(FlexispeechError, match="no run of that name"):
        speech_paired_table(runs, "static_r8")


def test_compare_baseline_on_speech_eval_dirs(corpus, adapter, tmp_path, capsys) -> None:  # noqa: F811
    base = tmp_path / "base"
    assert (
        main(
            [
                "eval",
                "--data",
                str(corpus),
                "--model",
                "random:tiny",
                "--audio-ctx",
                "100",
                "--name",
                "base",
                "--max-new-tokens",
                "3",
                "--out",
                str(base),
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "eval",
                "--data",
                str(corpus),
                "--adapter",
                str(adapter),
                "--max-new-tokens",
                "3",
                "--out",
                str(tmp_path / "a"),
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert main(["compare", str(base), str(tmp_path / "a"), "--baseline", "base"]) == 0
    out = capsys.readouterr().out
    assert "paired against base" in out and "| threshold | all | 6 |" in out
