"""``flexispeech transcribe`` in-process: a tiny random Whisper directory, adapters, routers,
bad files among good ones; and the real tiny.en on the fixtures (slow)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from flexispeech import FlexiLoraConfig, ThresholdRouter, inject, save_adapter
from flexispeech.cli import main
from flexispeech.models.random_init import randomize_adapters
from flexispeech.models.whisper import FAMILY

FAST = ["--audio-ctx", "150", "--max-new-tokens", "5"]  # a 3-s window; random models never stop


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory: pytest.TempPathFactory):
    """(model_dir, adapter_dir): a saved random tiny Whisper and an adapter for it whose
    router sends clips under 2.75 s to rank 2 and longer ones to rank 8 (it also reads the
    proxy signal, with weight 0, so that the proxy is computed)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls: a busy multi-core pool only adds spin-waits
    root = tmp_path_factory.mktemp("tiny_whisper")
    model, processor = FAMILY.load("random:tiny")
    model.save_pretrained(root / "model")
    processor.save_pretrained(root / "model")
    inject(model, FlexiLoraConfig(ranks=(0, 2, 8), target_modules=FAMILY.default_targets))
    randomize_adapters(model)
    from flexispeech.lora import attach_router

    attach_router(
        model, ThresholdRouter(ranks=(2, 8), weights={"duration": 1.0, "proxy": 0.0}, thresholds=[2.75])
    )
    save_adapter(model, root / "adapter")
    yield root / "model", root / "adapter"
    torch.set_num_threads(n)


@pytest.fixture
def files(assets_dir: Path, tmp_path: Path) -> list[str]:
    bad = tmp_path / "notaudio.wav"
    bad.write_text("this is not audio")
    return [
        str(assets_dir / "fox.wav"),
        str(bad),
        str(assets_dir / "meeting.wav"),
        str(tmp_path / "missing.flac"),
    ]


def test_bad_files_are_reported_and_the_rest_transcribed(tiny_dirs, files, capsys) -> None:
    model_dir, _ = tiny_dirs
    assert main(["transcribe", *files, "--model", str(model_dir), *FAST]) == 1
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert [line.split("\t")[0] for line in lines] == [files[0], files[2]]
    assert all(len(line.split("\t")) == 2 for line in lines)
    errors = err.strip().splitlines()
    assert len(errors) == 2 and "Traceback" not in err
    assert files[1] in errors[0] and "cannot decode" in errors[0]
    assert files[3] in errors[1] and "no such file" in errors[1]


def three_files(tiny_dirs, assets_dir: Path, capsys) -> tuple[list[str], Callable[..., list[dict]]]:
    """Three fixture files and ``run(*options)``: ``transcribe --json`` of them with the
    tiny model and adapter plus ``options``, its JSON lines."""
    model_dir, adapter_dir = tiny_dirs
    paths = [str(assets_dir / n) for n in ("fox.wav", "meeting.wav", "stella.wav")]
    args = ["transcribe", *paths, "--model", str(model_dir), "--adapter", str(adapter_dir), "--json", *FAST]

    def run(*extra: str) -> list[dict]:
        assert main([*args, *extra]) == 0
        return [json.loads(line) for line in capsys.readouterr().out.splitlines()]

    return paths, run


def test_router_auto_json_lines(tiny_dirs, assets_dir: Path, capsys) -> None:
    model_dir, adapter_dir = tiny_dirs
    paths = [str(assets_dir / n) for n in ("fox.wav", "meeting.wav", "fox_48k_stereo.flac")]
    code = main(
        [
            "transcribe",
            *paths,
            "--model",
            str(model_dir),
            "--adapter",
            str(adapter_dir),
            "--router",
            "auto",
            "--json",
            "--beam",
            "2",
            *FAST,
        ]
    )
    assert code == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["path"] for r in rows] == paths
    for r in rows:
        assert set(r) == {"path", "text", "rank", "duration", "signals"}
        assert set(r["signals"]) == {"duration", "snr_db", "speech_activity", "proxy", "proxy_entropy"}
        assert r["rank"] == (2 if r["duration"] < 2.75 else 8)
    assert rows[0]["rank"] == 2 and rows[1]["rank"] == 8  # fox is 2.73 s, meeting 2.83 s
    assert rows[0]["duration"] == pytest.approx(rows[2]["duration"], abs=0.01)  # 48 kHz stereo resampled


def test_the_proxy_pass_and_the_joint_pick_share_the_base_encoder_pass(
    tiny_dirs, assets_dir: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The router reads the proxy (a base-model decoding of every file) and the joint pick
    decodes every file at rank 0 again: both take one base encoder pass per file, and the
    routed decoding one more (the scores none), 2 x 3 encoder rows in all. The rank-0
    transcripts are the base model's and the routed ones the router's. Fails if the signals
    are computed outside the block or a kept output is served at another rank."""
    from joint_scores import counted_encoder_rows

    paths, run = three_files(tiny_dirs, assets_dir, capsys)

    routed, base = run("--router", "auto"), run("--rank", "0")
    rows = counted_encoder_rows(monkeypatch)
    served = run("--router", "auto", "--joint-ranks", "0")
    assert sum(rows) == 2 * len(paths)
    for row, a, b in zip(served, routed, base):
        note = row["joint"]
        assert note["routed_rank"] == a["rank"] and note["routed_hyp"] == a["text"]
        assert note["hyps"] == {"0": b["text"], str(a["rank"]): a["text"]}


def test_fixed_rank_matches_router_for_same_rank(tiny_dirs, assets_dir: Path, capsys) -> None:
    model_dir, adapter_dir = tiny_dirs
    fox = str(assets_dir / "fox.wav")
    args = ["transcribe", fox, "--model", str(model_dir), "--adapter", str(adapter_dir), *FAST]
    assert main([*args, "--rank", "2"]) == 0
    fixed = capsys.readouterr().out
    assert main([*args, "--router", "auto"]) == 0
    assert capsys.readouterr().out == fixed
    assert main([*args, "--rank", "0"]) == 0
    base = capsys.readouterr().out
    assert main(["transcribe", fox, "--model", str(model_dir), *FAST]) == 0
    assert capsys.readouterr().out == base  # rank 0 is the base model


def test_user_errors_are_one_line(tiny_dirs, assets_dir: Path, tmp_path: Path, capsys) -> None:
    model_dir, adapter_dir = tiny_dirs
    fox = str(assets_dir / "fox.wav")
    assert main(["transcribe", fox, "--model", str(model_dir), "--rank", "2"]) == 2
    assert "need an adapter" in capsys.readouterr().err
    no_router = tmp_path / "adapter"
    shutil.copytree(adapter_dir, no_router)
    (no_router / "router.json").unlink()
    assert (
        main(["transcribe", fox, "--model", str(model_dir), "--adapter", str(no_router), "--router", "auto"])
        == 2
    )
    assert "without a router" in capsys.readouterr().err
    assert (
        main(
            [
                "transcribe",
                fox,
                "--model",
                str(model_dir),
                "--adapter",
                str(adapter_dir),
                "--rank",
                "5",
                *FAST,
            ]
        )
        == 2
    )
    assert "not in the configured ranks" in capsys.readouterr().err


def test_fallback_transcribes_looping_files_again_at_its_rank(tiny_dirs, assets_dir: Path, capsys) -> None:
    """``--fallback-rank`` in transcribe serves what ``eval --fallback-rank`` scores: with a
    threshold every transcript at rank 8 exceeds, every file is decoded again at rank 2 and
    keeps rank 2's transcript where that compresses less; with a threshold none exceeds,
    the output is rank 8's unchanged. Fails if transcribe ignores the option, decodes at
    another rank or gives one file's second transcript to another."""
    from flexispeech.evaluation.fallback import compression_ratio

    model_dir, adapter_dir = tiny_dirs
    paths = [str(assets_dir / n) for n in ("fox.wav", "meeting.wav", "fox_48k_stereo.flac")]
    args = ["transcribe", *paths, "--model", str(model_dir), "--adapter", str(adapter_dir), "--json"]
    args += ["--audio-ctx", "150", "--max-new-tokens", "12"]

    def run(*extra: str) -> list[dict]:
        assert main([*args, *extra]) == 0
        return [json.loads(line) for line in capsys.readouterr().out.splitlines()]

    routed, second = run("--rank", "8"), run("--rank", "2")
    low = min(compression_ratio(r["text"]) for r in routed)
    assert low > 0, routed  # no empty transcript (it could not be flagged)
    kept = [compression_ratio(b["text"]) < compression_ratio(a["text"]) for a, b in zip(routed, second)]
    # The random model's files differ in which transcript is kept, so a mix-up of files shows.
    assert len(set(kept)) == 2, (routed, second)
    served = run("--rank", "8", "--fallback-rank", "2", "--compression-ratio", f"{low * 0.99:.4f}")
    for row, a, b, k in zip(served, routed, second, kept):
        assert row["path"] == a["path"] and row["rank"] == 8  # the routed rank, as eval records it
        assert row["fallback"]["rank"] == 2 and row["fallback"]["kept"] is k
        assert row["fallback"]["routed_hyp"] == a["text"]
        assert row["text"] == (b["text"] if k else a["text"])
    untouched = run("--rank", "8", "--fallback-rank", "2", "--compression-ratio", "100")
    assert [r["text"] for r in untouched] == [r["text"] for r in routed]
    assert not any("fallback" in r for r in untouched)


def test_fallback_needs_an_adapter_and_one_of_its_ranks(tiny_dirs, assets_dir: Path, capsys) -> None:
    model_dir, adapter_dir = tiny_dirs
    fox = str(assets_dir / "fox.wav")
    assert main(["transcribe", fox, "--model", str(model_dir), "--fallback-rank", "0", *FAST]) == 2
    err = capsys.readouterr().err
    assert "--fallback-rank needs an adapter" in err and "Traceback" not in err
    with_adapter = ["transcribe", fox, "--model", str(model_dir), "--adapter", str(adapter_dir), *FAST]
    assert main([*with_adapter, "--fallback-rank", "5"]) == 2
    assert "rank(s) [5] not in the configured ranks" in capsys.readouterr().err
    assert main([*with_adapter, "--fallback-rank", "0", "--compression-ratio", "0"]) == 2
    assert "--compression-ratio" in capsys.readouterr().err


def test_joint_ranks_serves_the_likelier_of_the_routed_and_the_base_transcript(
    tiny_dirs, assets_dir: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--joint-ranks 0`` in transcribe serves what ``eval --joint-ranks 0`` scores: each
    file's transcripts at its routed rank (8) and at rank 0 (the base model), each scored at
    both ranks, the one with the higher sum served and its rank reported. The scores are
    recomputed here file by file. Fails if transcribe ignores the option, mixes up files or
    ranks, or serves the less likely transcript."""
    from joint_scores import counted_encoder_rows, rescored, spied_weights, stored_scores

    from flexispeech.audio import load_audio
    from flexispeech.evaluation.joint import joint_pick
    from flexispeech.lora.io import load_adapter
    from flexispeech.models.family import load_model

    model_dir, adapter_dir = tiny_dirs
    paths, run = three_files(tiny_dirs, assets_dir, capsys)

    at8, at0 = run("--rank", "8"), run("--rank", "0")
    served = run("--rank", "8", "--joint-ranks", "0")
    model, processor = load_model(FAMILY, str(model_dir), audio_ctx=150)
    load_adapter(model, adapter_dir)
    scored = 0
    for row, a, b in zip(served, at8, at0):
        note = row["joint"]
        assert row["path"] == a["path"] and note["routed_rank"] == 8 and note["routed_hyp"] == a["text"]
        assert note["hyps"] == {"0": b["text"], "8": a["text"]}
        assert row["rank"] == note["picked"] and row["text"] == note["hyps"][str(row["rank"])]
        if "scores" not in note:
            assert row["rank"] == 8
            continue
        scored += 1
        want = rescored(model, processor, load_audio(row["path"]), note["hyps"], (0, 8))
        torch.testing.assert_close(stored_scores(note, (0, 8)), want, atol=2e-3, rtol=1e-4)
        assert row["rank"] == (0, 8)[joint_pick(want)]
    assert scored  # the random adapter moves some transcript
    # The scoring passes took the decodings' encoder outputs: one pass per file at rank 8
    # and one at rank 0 (the adapter covers the encoder), none more for the scores.
    rows = counted_encoder_rows(monkeypatch)
    assert run("--rank", "8", "--joint-ranks", "0") == served
    assert sum(rows) == 2 * len(paths)
    fox = paths[0]
    assert main(["transcribe", fox, "--model", str(model_dir), "--joint-ranks", "0", *FAST]) == 2
    assert "--joint-ranks needs an adapter" in capsys.readouterr().err
    with_adapter = ["transcribe", fox, "--model", str(model_dir), "--adapter", str(adapter_dir), *FAST]
    assert main([*with_adapter, "--joint-ranks", "5"]) == 2
    assert "rank(s) [5] not in the configured ranks" in capsys.readouterr().err
    assert main([*with_adapter, "--joint-ranks", "0", "--joint-base-weight", "-2"]) == 2
    assert "--joint-base-weight: needs a finite weight >= 0" in capsys.readouterr().err
    # --joint-base-weight reaches the pick (eval's test checks what a weight picks)
    import flexispeech.streaming.transcriber as transcriber_module

    weights_seen = spied_weights(monkeypatch, transcriber_module)
    for row in run("--rank", "8", "--joint-ranks", "0", "--joint-base-weight", "0.25"):
        if "scores" in row["joint"]:
            s = row["joint"]["scores"]
            weighted = torch.tensor([[0.25 * s[c]["0"], s[c]["8"]] for c in ("0", "8")])
            assert row["rank"] == (0, 8)[joint_pick(weighted)]
    assert weights_seen == [{0: 0.25}]


@pytest.mark.slow
def test_tiny_en_transcribes_the_fixtures(assets_dir: Path, transcripts: dict[str, str], capsys) -> None:
    import jiwer
    from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

    paths = [str(assets_dir / n) for n in transcripts]
    assert main(["transcribe", *paths, "--beam", "2"]) == 0
    got = dict(line.split("\t", 1) for line in capsys.readouterr().out.splitlines())
    norm = EnglishTextNormalizer({})
    refs = [norm(transcripts[Path(p).name]) for p in paths]
    assert jiwer.wer(refs, [norm(got[p]) for p in paths]) <= 0.05, got
