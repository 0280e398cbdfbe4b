"""``flexispeech eval --rank`` and ``--beam`` on a tiny corpus and a random tiny Whisper
adapter: the options reach decoding (rank 0 is the base model's output, a higher rank
changes it; the beam size reaches ``generate``, changes the output, and rank 0 under beam
search is still the base model)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from flexispeech.cli import main
from flexispeech.data.corpus import write_corpus

SR = 16_000
Decoded = dict[str, tuple[str, int | None]]  # utterance id -> (hypothesis, rank)
FAST = ["--model", "random:tiny", "--audio-ctx", "150", "--max-new-tokens", "4", "--batch-size", "4"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four test utterances: tones of different pitch and length with a little noise, with
    the signal columns ``flexispeech signals`` adds (a router reads them, a fixed rank too)."""
    root = tmp_path_factory.mktemp("corpus")
    (root / "audio").mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for i in range(4):
        dur = 0.6 + 0.2 * i
        t = np.arange(int(dur * SR)) / SR
        audio = 0.2 * np.sin(2 * np.pi * (180 + 90 * i) * t) + rng.normal(0, 0.01, t.size)
        sf.write(root / "audio" / f"u{i}.wav", audio.astype(np.float32), SR)
        rows.append(
            {
                "id": f"u{i}",
                "audio": f"audio/u{i}.wav",
                "text": "call stella",
                "duration": dur,
                "speaker": "s",
                "split": "test",
                "voice": "v",
                "signal_duration": dur,
                "signal_snr_db": 26.0,
            }
        )
    return write_corpus(rows, root, name="mini")


@pytest.fixture(scope="module")
def adapter(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved adapter (ranks 0, 2, 8) on the random tiny Whisper, with random non-zero B
    (a fresh adapter is the identity at every rank)."""
    from flexispeech import FlexiLoraConfig, inject, save_adapter
    from flexispeech.models.random_init import randomize_adapters
    from flexispeech.models.whisper import FAMILY

    model, _ = FAMILY.load("random:tiny")
    inject(model, FlexiLoraConfig(ranks=(0, 2, 8), target_modules=FAMILY.default_targets))
    randomize_adapters(model, b_scale=0.5)
    return save_adapter(model, tmp_path_factory.mktemp("adapter") / "adapter")


def evaluate(corpus: Path, out: Path, *options: str) -> Decoded:
    """``flexispeech eval`` with ``options``: the hypotheses and ranks in its results.json."""
    assert main(["eval", "--data", str(corpus), *FAST, "--out", str(out), *options]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["n"] == 4 and res["n_skipped"] == 0
    return {u["id"]: (u["hyp"], u["rank"]) for u in res["utterances"]}


@pytest.fixture(scope="module")
def greedy(corpus: Path, adapter: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Decoded]:
    """Greedy decodings: the base model (no adapter) and the adapter at ranks 2 and 8."""
    out = tmp_path_factory.mktemp("greedy")
    return {
        "base": evaluate(corpus, out / "base"),
        **{r: evaluate(corpus, out / r, "--adapter", str(adapter), "--rank", r) for r in ("2", "8")},
    }


def texts(decoded: Decoded) -> dict[str, str]:
    return {u: h for u, (h, _) in decoded.items()}


def test_rank_zero_is_the_base_model_and_higher_ranks_change_the_output(
    corpus: Path, adapter: Path, greedy: dict[str, Decoded], tmp_path: Path
) -> None:
    at_0 = evaluate(corpus, tmp_path / "r0", "--adapter", str(adapter), "--rank", "0")
    assert all(rank is None for _, rank in greedy["base"].values())  # no adapter, no ranks
    for rank, decoded in [(0, at_0), (2, greedy["2"]), (8, greedy["8"])]:
        assert {u: r for u, (_, r) in decoded.items()} == dict.fromkeys(at_0, rank)
    assert texts(at_0) == texts(greedy["base"])
    # The random adapter moves the output, differently at each rank: had --rank been ignored,
    # these would all be one decoding.
    assert texts(greedy["2"]) != texts(greedy["base"]) and texts(greedy["8"]) != texts(greedy["base"])
    assert texts(greedy["2"]) != texts(greedy["8"])


def test_beam_reaches_generate_and_keeps_the_rank(
    corpus: Path, adapter: Path, greedy: dict[str, Decoded], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from transformers import WhisperForConditionalGeneration

    beams: list[int] = []
    generate = WhisperForConditionalGeneration.generate

    def spy(self, *args, **kwargs):
        beams.append(kwargs.get("num_beams", 1))
        return generate(self, *args, **kwargs)

    monkeypatch.setattr(WhisperForConditionalGeneration, "generate", spy)
    decoded = {}
    for name, options in [("base", []), ("0", ["--rank", "0"]), ("2", ["--rank", "2"])]:
        beams.clear()
        adapter_options = ["--adapter", str(adapter), *options] if options else []
        decoded[name] = evaluate(corpus, tmp_path / name, "--beam", "3", *adapter_options)
        assert beams and set(beams) == {3}, beams  # every generate call searched with 3 beams
    assert {u: r for u, (_, r) in decoded["2"].items()} == dict.fromkeys(decoded["2"], 2)
    # Rank 0 under beam search is still the base model: the rank follows a row into its beams.
    assert texts(decoded["0"]) == texts(decoded["base"])
    # Beam search is not greedy decoding here: the beam size changed what rank 2 decodes.
    assert texts(decoded["2"]) != texts(greedy["2"]) and texts(decoded["2"]) != texts(decoded["base"])


def test_fallback_decodes_looping_rows_again_at_its_rank(corpus: Path, adapter: Path, tmp_path: Path) -> None:
    """With a threshold every hypothesis at rank 2 exceeds, every row is decoded again at
    rank 8 and keeps rank 8's hypothesis where that compresses less; with a threshold none
    exceeds, the output is rank 2's unchanged. Fails if the fallback decodes at another rank,
    other rows or rows in another order, or keeps the wrong hypothesis."""
    from flexispeech.evaluation.fallback import compression_ratio

    long = ["--max-new-tokens", "24", "--adapter", str(adapter), "--rank"]
    routed = texts(evaluate(corpus, tmp_path / "r2", *long, "2"))
    second = texts(evaluate(corpus, tmp_path / "r8", *long, "8"))
    assert len(set(second.values())) == 4, second  # rows tell apart: a mix-up of rows shows
    low = min(compression_ratio(t) for t in routed.values())
    assert low > 0, routed  # no empty hypothesis (it could not be flagged)
    options = [*long, "2", "--fallback-rank", "8", "--compression-ratio"]
    out = tmp_path / "fallback"
    evaluate(corpus, out, *options, f"{low * 0.99:.4f}")
    res = json.loads((out / "results.json").read_text())
    assert res["fallback_decodes"] == 4 and res["fallback"] == {"rank": 8, "threshold": round(low * 0.99, 4)}
    kept = {u: compression_ratio(second[u]) < compression_ratio(routed[u]) for u in routed}
    assert any(kept.values()), kept  # the fallback hypothesis is kept somewhere (unit tests: the choice)
    for u in res["utterances"]:
        assert u["fallback"]["kept"] is kept[u["id"]] and u["fallback"]["rank"] == 8
        assert u["hyp"] == (second[u["id"]] if kept[u["id"]] else routed[u["id"]])
        assert u["rank"] == 2  # the routed rank, as the histogram counts it
    assert res["fallback_kept"] == sum(kept.values())
    without = json.loads((tmp_path / "r2" / "results.json").read_text())["overall"]
    assert res["overall_without_fallback"] == without  # one run also scores "no fallback"
    untouched = evaluate(corpus, tmp_path / "none", *options, "100")
    assert texts(untouched) == routed


def test_fallback_needs_an_adapter_and_one_of_its_ranks(
    corpus: Path, adapter: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    code = main(["eval", "--data", str(corpus), *FAST, "--out", str(tmp_path), "--fallback-rank", "0"])
    assert code != 0 and "--fallback-rank needs --adapter" in capsys.readouterr().err
    options = ["--adapter", str(adapter), "--fallback-rank", "3"]
    assert main(["eval", "--data", str(corpus), *FAST, "--out", str(tmp_path), *options]) == 2
    assert "rank(s) [3] not in the configured ranks" in capsys.readouterr().err


def test_consensus_decodes_every_pool_rank_and_keeps_the_closest(
    corpus: Path, adapter: Path, greedy: dict[str, Decoded], tmp_path: Path
) -> None:
    """--consensus-ranks 0,2,8: every row routed to rank 2 is decoded at ranks 0, 2 and 8 and
    served the hypothesis closest to the other two (ties: the lower rank); rows routed to
    rank 0 keep the base model's. Fails if a pool rank is not decoded, rows are mixed up,
    or the pick is not the consensus."""
    from flexispeech.evaluation.consensus import consensus_index
    from flexispeech.evaluation.metrics import source_normalizer

    normalize = source_normalizer("random:tiny")
    at = {"0": texts(greedy["base"]), "2": texts(greedy["2"]), "8": texts(greedy["8"])}
    assert at["2"] != at["8"] and at["2"] != at["0"]  # the ranks disagree somewhere
    out = tmp_path / "consensus"
    evaluate(corpus, out, "--adapter", str(adapter), "--rank", "2", "--consensus-ranks", "8,0,2")
    res = json.loads((out / "results.json").read_text())
    assert res["consensus_ranks"] == [0, 2, 8] and res["decodes_per_utterance"] == 3
    for u in res["utterances"]:
        pool = {k: at[k][u["id"]] for k in ("0", "2", "8")}
        assert u["consensus"]["hyps"] == pool and u["consensus"]["routed_rank"] == 2
        pick = [0, 2, 8][consensus_index(list(pool.values()), normalize)]
        assert u["rank"] == pick == u["consensus"]["picked"] and u["hyp"] == pool[str(pick)]
    gated = tmp_path / "at0"
    kept = evaluate(corpus, gated, "--adapter", str(adapter), "--rank", "0", "--consensus-ranks", "2,8")
    assert texts(kept) == at["0"]  # routed to rank 0 (a gate's "no adapter"): left alone
    assert json.loads((gated / "results.json").read_text())["decodes_per_utterance"] == 1


def test_joint_ranks_scores_each_rank_hypothesis_at_each_rank_and_serves_the_likeliest(
    corpus: Path, adapter: Path, greedy: dict[str, Decoded], tmp_path: Path
) -> None:
    """--joint-ranks 0 at --rank 8: every row routed to rank 8 is also decoded at rank 0; where the
    two differ, each is scored at ranks 0 and 8 and the one with the higher summed
    log-probability served. The scores are recomputed here one utterance at a time. Fails
    if a score is taken at the wrong rank or row, or the pick is not the likeliest."""
    import torch
    from joint_scores import rescored, stored_scores

    from flexispeech.audio import load_audio
    from flexispeech.evaluation.joint import joint_pick
    from flexispeech.evaluation.metrics import source_normalizer
    from flexispeech.lora.io import load_adapter
    from flexispeech.models.family import load_model
    from flexispeech.models.whisper import FAMILY

    normalize = source_normalizer("random:tiny")
    at = {"0": texts(greedy["base"]), "8": texts(greedy["8"])}
    differ = [u for u in at["0"] if normalize(at["0"][u]) != normalize(at["8"][u])]
    assert differ  # the random adapter moves some transcript
    out = tmp_path / "joint"
    evaluate(corpus, out, "--adapter", str(adapter), "--rank", "8", "--joint-ranks", "0")
    res = json.loads((out / "results.json").read_text())
    assert res["joint_ranks"] == [0] and res["decodes_per_utterance"] == 2
    assert res["scored_utterances"] == len(differ)
    model, processor = load_model(FAMILY, "random:tiny", audio_ctx=150)
    load_adapter(model, adapter)
    for u in res["utterances"]:
        note = u["joint"]
        assert note["hyps"] == {k: at[k][u["id"]] for k in ("0", "8")} and note["routed_rank"] == 8
        assert u["rank"] == note["picked"] and u["hyp"] == note["hyps"][str(u["rank"])]
        if u["id"] not in differ:
            assert "scores" not in note and u["rank"] == 8
            continue
        want = rescored(
            model, processor, load_audio(corpus / "audio" / f"{u['id']}.wav"), note["hyps"], (0, 8)
        )
        torch.testing.assert_close(stored_scores(note, (0, 8)), want, atol=2e-3, rtol=1e-4)
        assert u["rank"] == (0, 8)[joint_pick(want)]


def test_joint_ranks_runs_the_encoder_once_per_clip_and_rank(
    corpus: Path, adapter: Path, greedy: dict[str, Decoded], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The joint pick's scoring passes take the encoder outputs its decodings made (the
    adapter covers the encoder, so one pass per clip at rank 8 and one at rank 0): 8
    encoder rows for 4 clips, where scoring again would add 2 per clip scored. The
    transcripts are those of the test above, which recomputes every score without reuse."""
    from joint_scores import counted_encoder_rows

    rows = counted_encoder_rows(monkeypatch)
    out = tmp_path / "joint"
    evaluate(corpus, out, "--adapter", str(adapter), "--rank", "8", "--joint-ranks", "0")
    res = json.loads((out / "results.json").read_text())
    assert res["scored_utterances"] > 0  # scoring passes ran, and ran no encoder
    assert sum(rows) == 2 * 4


def test_joint_base_weight_reweighs_rank_zeros_vote_in_the_stored_scores(
    corpus: Path,
    adapter: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """--joint-base-weight 0.25 reaches the pick, each scored row is served the transcript
    the weighted sum prefers (from the unweighted scores its note keeps: what a weight picks
    is tests/evaluation/test_joint.py's), results.json names the weight; a
    bad weight, or one without rank 0 in --joint-ranks, is a one-line error. Fails if the
    weight is not passed on to the pick."""
    import torch
    from joint_scores import spied_weights

    import flexispeech.evaluation.evaluate as evaluate_module
    from flexispeech.evaluation.joint import joint_pick

    weights_seen = spied_weights(monkeypatch, evaluate_module)
    out = tmp_path / "w"
    evaluate(
        corpus,
        out,
        "--adapter",
        str(adapter),
        "--rank",
        "8",
        "--joint-ranks",
        "0",
        "--joint-base-weight",
        "0.25",
    )
    assert weights_seen == [{0: 0.25}]  # one batch, the weight passed on to the pick
    res = json.loads((out / "results.json").read_text())
    assert res["joint_weights"] == {"0": 0.25} and res["scored_utterances"] > 0
    for u in res["utterances"]:
        note = u["joint"]
        if "scores" in note:
            s = note["scores"]
            weighted = torch.tensor([[0.25 * s[c]["0"], s[c]["8"]] for c in ("0", "8")])
            assert u["rank"] == (0, 8)[joint_pick(weighted)] and u["hyp"] == note["hyps"][str(u["rank"])]
    base = ["eval", "--data", str(corpus), *FAST, "--out", str(tmp_path / "bad"), "--adapter", str(adapter)]
    for bad in ("-1", "inf", "nan"):
        assert main([*base, "--joint-ranks", "0", f"--joint-base-weight={bad}"]) == 2
        assert "--joint-base-weight: needs a finite weight >= 0" in capsys.readouterr().err
    assert main([*base, "--joint-ranks", "2", "--joint-base-weight", "0.5"]) == 2
    assert "give --joint-ranks with 0" in capsys.readouterr().err


def test_joint_ranks_needs_an_adapter_two_ranks_and_not_the_consensus(
    corpus: Path, adapter: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    base = ["eval", "--data", str(corpus), *FAST, "--out", str(tmp_path)]
    assert main([*base, "--joint-ranks", "0,8"]) == 2
    assert "--joint-ranks needs --adapter" in capsys.readouterr().err
    for bad in ("", "-1", "zero"):
        assert main([*base, "--adapter", str(adapter), f"--joint-ranks={bad}"]) == 2
        assert "--joint-ranks: " in capsys.readouterr().err
    assert main([*base, "--adapter", str(adapter), "--joint-ranks", "0,8", "--consensus-ranks", "2,8"]) == 2
    assert "give one" in capsys.readouterr().err
    assert main([*base, "--adapter", str(adapter), "--joint-ranks", "0,4"]) == 2
    assert "rank(s) [4] not in the configured ranks" in capsys.readouterr().err


def test_consensus_needs_an_adapter_two_ranks_and_speech(
    corpus: Path, adapter: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    base = ["eval", "--data", str(corpus), *FAST, "--out", str(tmp_path)]
    assert main([*base, "--consensus-ranks", "2,8"]) == 2
    assert "--consensus-ranks needs --adapter" in capsys.readouterr().err
    for bad in ("2", "two,8", "-1,2"):
        assert main([*base, "--adapter", str(adapter), f"--consensus-ranks={bad}"]) == 2
        assert "--consensus-ranks: " in capsys.readouterr().err
    assert main([*base, "--adapter", str(adapter), "--consensus-ranks", "2,4"]) == 2
    assert "rank(s) [4] not in the configured ranks" in capsys.readouterr().err
