"""Routing by benefit: labels from per-rank WERs, the mean-rank calibration of a learned
router, the resumable decode cache and the ``calibrate`` command."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from mini_corpus import write_mini_corpus

from flexispeech.cli import main
from flexispeech.errors import ConfigError
from flexispeech.evaluation.benefit import DecodeCache, benefit_labels, fit_benefit_router
from flexispeech.lora.router import LearnedRouter, Router
from flexispeech.training.config import load_config
from flexispeech.training.loop import train


def test_benefit_labels_take_the_smallest_rank_with_the_lowest_wer() -> None:
    wers = torch.tensor(
        [
            [0.2, 0.1, 0.1, 0.3],  # ranks 2 and 4 tie for the best: the lower one
            [0.0, 0.0, 0.0, 0.0],  # nothing helps: the base
            [0.5, 0.6, 0.7, 0.4],  # only the top rank helps
            [0.3, 0.5, 0.3, 0.3],  # no rank beats the base: the base
            [1.0, 0.9, 0.8, 0.9],
        ]
    )
    assert benefit_labels(wers, [0, 2, 4, 8]).tolist() == [2, 0, 8, 0, 4]
    with pytest.raises(ConfigError, match="start with 0"):
        benefit_labels(wers, [2, 4, 8, 16])
    with pytest.raises(ConfigError, match=r"\[N, 3\]"):
        benefit_labels(wers, [0, 2, 4])


def test_the_errors_objective_serves_the_rank_with_the_fewest_expected_errors() -> None:
    """Two kinds of input the features can tell apart. Easy (x < 0): 60 % are perfect at every
    rank (label 0), 40 % make 3 errors at rank 0 and none at rank 4 (label 4); hard (x > 0):
    5 errors at rank 0, 1 at rank 4. The labels' majority on easy inputs is rank 0 (1.2
    errors per utterance); the expected errors say rank 4 (0). This is the GPU study's loss:
    the easiest utterances, kept at rank 0, were the ones static LoRA still improved."""
    n = 200
    x = torch.cat([torch.full((n,), -1.0), torch.full((n,), 1.0)])  # within a kind, inputs look alike
    easy_gains = torch.arange(n) % 5 < 2  # 40 % of the easy ones
    errors = torch.zeros(2 * n, 2, dtype=torch.float64)
    errors[:n, 0] = torch.where(easy_gains, 3.0, 0.0)
    errors[n:, 0], errors[n:, 1] = 5.0, 1.0
    signals = {"proxy": x}
    wers = errors / 10  # 10 reference words each
    labels = benefit_labels(wers, [0, 4])
    by_labels = fit_benefit_router(signals, labels, [0, 4], ["proxy"])
    by_errors = fit_benefit_router(signals, labels, [0, 4], ["proxy"], errors=errors)
    assert by_labels(signals)[:n].tolist() == [0] * n and by_errors(signals)[:n].tolist() == [4] * n
    assert by_labels(signals)[n:].tolist() == [4] * n == by_errors(signals)[n:].tolist()

    def served(router):
        picked = (router(signals) == 4).long()
        return float(errors[torch.arange(2 * n), picked].sum())

    assert served(by_errors) == 200.0 < served(by_labels) == 440.0  # 80 x 3 more on the easy ones
    # A target mean rank caps the ranks and never raises them: at 2 half the inputs go to
    # rank 0 (the easy ones cost less there), at 4 nothing changes, and the label router
    # is not pushed up to spend it either.
    capped = fit_benefit_router(signals, labels, [0, 4], ["proxy"], target_mean_rank=2.0, errors=errors)
    assert capped(signals).float().mean() <= 2.0 and capped(signals)[n:].tolist() == [4] * n
    assert fit_benefit_router(signals, labels, [0, 4], ["proxy"], 4.0, errors=errors).rank_penalty == 0.0
    uncapped = fit_benefit_router(signals, labels, [0, 4], ["proxy"], target_mean_rank=4.0)
    assert uncapped(signals).tolist() == by_labels(signals).tolist()
    with pytest.raises(ConfigError, match="labels or costs"):
        LearnedRouter([0, 4], ["proxy"]).fit(signals, labels, costs=errors)
    with pytest.raises(ConfigError, match=r"costs must be finite, \[N, 2\]"):
        LearnedRouter([0, 4], ["proxy"]).fit(signals, costs=errors[:, :1])


def test_cost_fit_predicts_each_ranks_errors_so_the_cap_trades_them_for_rank() -> None:
    """The logits regress the negated (scaled) costs: their gaps are predicted error
    differences, so the mean-rank cap sends to rank 0 first the inputs that lose the fewest
    errors there. Two kinds that both gain from rank 4 but by 1 and by 10 errors: capped at
    a mean rank of 2, the one that gains 1 goes to rank 0."""
    n = 400
    kind = torch.arange(2 * n) % 2  # 0: 1 error at rank 0, none at rank 4; 1: 12 and 2
    signals = {"proxy": kind.float() + 0.05 * torch.randn(2 * n, generator=torch.Generator().manual_seed(0))}
    errors = torch.tensor([[1.0, 0.0], [12.0, 2.0]])[kind]
    router = LearnedRouter([0, 4], ["proxy"])
    router.fit(signals, costs=errors, seed=0)
    gap = (router.logits(signals)[:, 1] - router.logits(signals)[:, 0]).detach()
    scale = float(errors.abs().mean())  # costs are scaled to a mean of 1
    assert float(gap[kind == 0].mean()) == pytest.approx(1.0 / scale, abs=0.1)
    assert float(gap[kind == 1].mean()) == pytest.approx(10.0 / scale, abs=0.3)
    router.calibrate_mean_rank(signals, 2.0)
    served = router(signals)
    assert served[kind == 1].tolist() == [4] * n  # (one kind-0 row may sit on the cap's boundary)
    assert float((served[kind == 0] == 0).float().mean()) >= 0.99


def test_a_router_that_loses_to_one_rank_on_its_own_data_is_not_served() -> None:
    from flexispeech.evaluation.benefit import constant_fallback
    from flexispeech.lora.router import FixedRouter, ThresholdRouter

    proxy = torch.linspace(0, 1, 100)
    # ranks 0, 4, 16: the easiest fifth is perfect at rank 0 and not at rank 4; rank 16 is best
    errors = torch.stack([10 * (proxy - 0.2).clamp(min=0), 2 * proxy, torch.full_like(proxy, 0.5)], dim=1)
    signals = {"proxy": proxy}
    backwards = ThresholdRouter([0, 4, 16], weights={"proxy": -1.0}, thresholds=[-0.6, -0.3])  # hardest -> 0
    served, report = constant_fallback(backwards, signals, errors, [0, 4, 16], max_mean_rank=8.0)
    assert isinstance(served, FixedRouter) and served.rank == 4  # rank 16 is above the cap
    assert report["fallback_to_constant"] and report["best_constant_errors"] < report["router_errors"]
    forwards = ThresholdRouter([0, 4, 16], weights={"proxy": 1.0}, thresholds=[0.2, 2.0])  # easiest -> 0
    kept, report = constant_fallback(forwards, signals, errors, [0, 4, 16], max_mean_rank=8.0)
    assert kept is forwards and not report["fallback_to_constant"]


def test_learned_router_mean_rank_calibration_and_vector_features() -> None:
    gen = torch.Generator().manual_seed(0)
    n = 400
    emb = torch.randn(n, 3, generator=gen)
    snr = torch.rand(n, generator=gen) * 30
    labels = torch.tensor([0, 4, 8])[(emb[:, 0] > 0).long() + (emb[:, 1] > 0.5).long()]
    signals = {"embedding": emb, "snr_db": snr}
    router = fit_benefit_router(signals, labels, [0, 4, 8], ["embedding", "snr_db"], seed=0)
    assert router.widths == [3, 1] and router.rank_penalty == 0.0
    assert (router(signals) == labels).float().mean() > 0.9  # it learns the labels from the vector
    means = []
    for target in (1.0, 3.0, 6.0):
        got = router.calibrate_mean_rank(signals, target)
        assert got <= target and got == pytest.approx(float(router(signals).float().mean()))
        means.append(got)
    assert means == sorted(means) and means[-1] > means[0]
    # round trip through the adapter's router.json form, penalty included
    again = Router.from_dict(json.loads(json.dumps(router.to_dict())))
    assert isinstance(again, LearnedRouter) and again.rank_penalty == router.rank_penalty
    assert torch.equal(again(signals), router(signals))
    with pytest.raises(ConfigError, match="columns"):
        router({"embedding": emb[:, :2], "snr_db": snr})


def test_decode_cache_resumes_and_drops_a_cut_line(tmp_path) -> None:
    path = tmp_path / "decodes.jsonl"
    header = {"adapter": "abc", "ranks": [0, 4]}
    cache = DecodeCache(path, header)
    cache.add({"u1": {0: "a", 4: "b"}})
    cache.add({"u2": {0: "c", 4: "d"}})
    path.write_text(path.read_text() + '{"id": "u3", "hy')  # killed mid-line
    again = DecodeCache(path, header)
    assert again.hyps == {"u1": {0: "a", 4: "b"}, "u2": {0: "c", 4: "d"}}
    assert path.read_text().endswith("\n") and len(path.read_text().splitlines()) == 3
    fresh = DecodeCache(path, {"adapter": "other", "ranks": [0, 4]})  # another adapter's cache
    assert fresh.hyps == {} and len(path.read_text().splitlines()) == 1


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    rng = np.random.default_rng(0)
    clips = []
    for i in range(22):
        dur = 0.4 + 0.1 * (i % 5)
        audio = rng.normal(0, 0.05 * (1 + i % 4), int(16000 * dur))
        clips.append((audio, "train" if i < 12 else "validation" if i < 20 else "test", dur))
    return write_mini_corpus(tmp_path_factory.mktemp("corpus"), clips)


def test_calibrate_command_fits_a_benefit_router_and_resumes(corpus, tmp_path, capsys) -> None:
    assert main(["signals", str(corpus), "--splits", "train"]) == 0
    cfg = load_config(
        None,
        [
            f"output_dir={tmp_path / 'run'}",
            "name=run",
            "model.source=random:tiny",
            f"data.corpus={corpus}",
            "model.audio_ctx=100",
            "train.batch_size=4",
            "train.max_steps=2",
            "train.warmup_steps=1",
            "train.lr=1e-2",
            "adapter.ranks=[2, 4]",
            "routing.mode=random",
            "train.nested={prob: 1.0, mode: random}",
        ],
    )
    adapter = train(cfg, progress=False)
    args = ["calibrate", str(adapter), "--data", str(corpus), "--batch-size", "4"]
    assert main(args) == 2
    assert "run `flexispeech signals" in capsys.readouterr().err  # no signals cached yet: says which command
    assert main(["signals", str(corpus), "--splits", "validation"]) == 0
    assert main([*args, "--split", "test"]) == 2
    assert "never on the test split" in capsys.readouterr().err
    assert main([*args, "--max-new-tokens", "8"]) == 2  # a text option
    assert "--max-new-tokens: applies to text tasks" in capsys.readouterr().err
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    assert main([*args, "--out", str(mine)]) == 2  # refused before decoding, the folder kept
    assert "not an adapter's" in capsys.readouterr().err and (mine / "notes.txt").is_file()

    out = tmp_path / "benefit"
    assert main([*args, "--out", str(out), "--target-mean-rank", "2.0"]) == 0
    printed = capsys.readouterr().out
    assert "WER by rank r0" in printed and "labels (smallest rank with the lowest WER)" in printed
    router = json.loads((out / "router.json").read_text())
    assert router["type"] == "learned" and router["ranks"] == [0, 2, 4]
    assert router["features"] == ["snr_db", "duration", "speech_activity"]
    summary = json.loads((tmp_path / "run" / "calibrate_validation" / "summary.json").read_text())
    assert (
        summary["n"] == 8
        and sum(summary["label_histogram"].values()) == 8
        and summary["routed_mean_rank"] <= 2.0
    )
    assert summary["oracle_wer"] <= min(summary["wer_by_rank"].values())
    assert summary["objective"] == "errors"  # the default: fit to each rank's word errors
    # the fitted router is compared with every utterance at one rank under the same cap
    assert summary["best_constant_rank"] <= 2 and summary["fallback_to_constant"] == (
        summary["best_constant_errors"] < summary["router_errors"]
    )
    assert (router["type"] == "fixed") == summary["fallback_to_constant"]
    assert main([*args, "--out", str(out), "--label-noise", "0.1"]) == 2
    assert "applies to --objective labels" in capsys.readouterr().err
    assert (
        main([*args, "--out", str(tmp_path / "by_labels"), "--objective", "labels", "--label-noise", "0.1"])
        == 0
    )
    labelled = json.loads((tmp_path / "run" / "calibrate_validation" / "summary.json").read_text())
    assert labelled["objective"] == "labels" and labelled["label_histogram"] == summary["label_histogram"]
    cache = tmp_path / "run" / "calibrate_validation" / "decodes.jsonl"
    lines = cache.read_text().splitlines()
    assert len(lines) == 9 and all(set(json.loads(ln)["hyps"]) == {"0", "2", "4"} for ln in lines[1:])

    # A killed run: keep three utterances and half a line; the rerun decodes only the rest.
    cache.write_text("\n".join(lines[:4]) + "\n" + lines[4][:10])
    assert main([*args, "--out", str(out), "--target-mean-rank", "2.0"]) == 0
    assert cache.read_text().splitlines()[:4] == lines[:4]
    assert sorted(cache.read_text().splitlines()[1:]) == sorted(lines[1:])  # the same transcripts, none twice
    # default --out: the adapter's own router is replaced, the weights are not
    weights = (adapter / "adapter_model.safetensors").read_bytes()
    assert main(args) == 0
    assert json.loads((adapter / "router.json").read_text())["type"] == "learned"
    assert (adapter / "adapter_model.safetensors").read_bytes() == weights

    # --fallback-rank: every rank scored as evaluation serves it with the loop fallback, from
    # the same cached decodings. Rank 4's cached transcripts are made loops here (the
    # cache is what calibrate reads; a 2-step adapter decodes like the base model).
    lines = cache.read_text().splitlines()
    rows = [json.loads(ln) for ln in lines[1:]]
    for row in rows:
        row["hyps"]["4"] = "the quick fox " * 30
    cache.write_text("\n".join([lines[0], *map(json.dumps, rows)]) + "\n")
    assert main([*args, "--out", str(out)]) == 0
    plain = json.loads((tmp_path / "run" / "calibrate_validation" / "summary.json").read_text())
    assert main([*args, "--out", str(out), "--fallback-rank", "0"]) == 0
    assert "loop fallback to rank 0: hypotheses replaced r2:0 r4:8" in capsys.readouterr().out
    with_fb = json.loads((tmp_path / "run" / "calibrate_validation" / "summary.json").read_text())
    assert with_fb["loop_fallback"] == {"rank": 0, "threshold": 2.4, "replaced_by_rank": {"2": 0, "4": 8}}
    assert plain["wer_by_rank"]["4"] > 20 and plain["loop_fallback"] is None
    # the loops are replaced by rank 0's transcripts: rank 4 scores as rank 0 does
    assert with_fb["wer_by_rank"]["4"] == with_fb["wer_by_rank"]["0"] == plain["wer_by_rank"]["0"]
    assert with_fb["wer_by_rank"]["2"] == plain["wer_by_rank"]["2"]
    assert main([*args, "--out", str(out), "--fallback-rank", "8"]) == 2
    assert "was not decoded" in capsys.readouterr().err


def test_the_router_is_judged_on_utterances_it_was_not_fit_on() -> None:
    """Features that say nothing about the costs: fit on all 200 utterances, the router
    makes far fewer errors on them than the best single rank (it fits the noise); fit
    fold by fold and scored on the held-out folds it makes more, so it is not served. With
    features that do tell, the cross-validated router is kept."""
    from flexispeech.evaluation.benefit import constant_fallback
    from flexispeech.lora.router import FixedRouter

    gen = torch.Generator().manual_seed(0)
    n, ranks, names = 200, [0, 4, 16], [f"f{i}" for i in range(6)]
    x = torch.randn(n, 6, generator=gen)
    signals = {k: x[:, i] for i, k in enumerate(names)}
    noise = (torch.tensor([6.0, 3.0, 3.5]) + 3 * torch.randn(n, 3, generator=gen)).clamp(min=0).round()

    def fitted(errors):
        def refit(keep):
            return fit_benefit_router(
                {k: v[keep] for k, v in signals.items()}, None, ranks, names, 8.0, errors=errors[keep]
            )

        return refit(torch.arange(n)), refit

    router, refit = fitted(noise)
    kept, in_sample = constant_fallback(router, signals, noise, ranks, 8.0)
    assert kept is router and in_sample["router_errors"] < in_sample["best_constant_errors"]
    served, report = constant_fallback(router, signals, noise, ranks, 8.0, refit=refit)
    assert isinstance(served, FixedRouter) and served.rank == 4
    assert report["router_errors_cross_validated"] > report["best_constant_errors"] > report["router_errors"]

    # f0 > 0: perfect at rank 0 and hurt by the adapter; f0 < 0: needs rank 4
    telling = torch.where(
        (x[:, 0] > 0)[:, None], torch.tensor([0.0, 2.0, 2.0]), torch.tensor([6.0, 1.0, 1.0])
    )
    router, refit = fitted(telling)
    served, report = constant_fallback(router, signals, telling, ranks, 8.0, refit=refit)
    assert served is router and report["router_errors_cross_validated"] < report["best_constant_errors"]
