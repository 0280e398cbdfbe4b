"""Routing by benefit on text tasks: ``flexispeech calibrate`` answers the validation
questions at every rank with a tiny random-initialised causal LM, scores each answer as
``flexispeech eval`` does (errors = 1 - score), fits the router, and resumes from its
per-question cache."""

from __future__ import annotations

import json

import pytest
import torch

import flexispeech.evaluation.text_benefit as text_benefit
from data_prep.math import prepare_math
from data_prep.qa import prepare_qa
from flexispeech.cli import main
from flexispeech.data.text import open_split
from flexispeech.data.text_format import add_task_columns, load_text_task
from flexispeech.evaluation.benefit import benefit_labels
from flexispeech.evaluation.text_benefit import TEXT_FEATURES, score_table
from flexispeech.evaluation.text_report import summarize_text
from flexispeech.lora.io import load_adapter, save_adapter
from flexispeech.models.causal_lm import FAMILY
from flexispeech.models.random_init import randomize_adapters
from flexispeech.training.config import load_config
from flexispeech.training.loop import train

RANKS = [0, 2, 4, 8]


def _variants(gold: str, metric: str) -> list[str]:
    """Four answers to a question, one per rank: right, right in other words (QA: partly
    right), wrong, empty."""
    if metric == "accuracy":
        return [f"#### {gold}", f"so the answer is {gold}.", f"#### {gold}1", ""]
    return [gold, f"{gold} or somebody else", "nobody at all", ""]


@pytest.mark.parametrize("metric", ["accuracy", "f1"])
def test_errors_are_one_minus_the_score_eval_gives_the_same_answers(tmp_path, metric: str) -> None:
    prepare = prepare_math if metric == "accuracy" else prepare_qa
    task = prepare(tmp_path / "task", n_train=1, n_validation=6, n_test=1, seed=3)
    split = open_split(task, "validation")
    assert split.metric == metric
    hyps = {}
    for i, row in enumerate(split.rows):
        answers = _variants(str(row["answer"]), metric)
        hyps[str(row["id"])] = {
            r: answers[(i + j) % 4] for j, r in enumerate(RANKS)
        }  # every answer at every rank
    del hyps[str(split.rows[2]["id"])]  # a question not answered (yet): left out
    rows, scores = score_table(split, hyps, RANKS)
    assert rows == [0, 1, 3, 4, 5] and scores.shape == (5, 4)
    key = "correct" if metric == "accuracy" else "f1"
    for j, r in enumerate(RANKS):
        records = [{**split.record(i), "hyp": hyps[str(split.rows[i]["id"])][r], "rank": r} for i in rows]
        evaluated = summarize_text(records, metric, 0.0)
        assert scores[:, j].tolist() == [e[key] for e in evaluated["examples"]]
        assert float(scores[:, j].mean()) == pytest.approx(
            evaluated["overall"]["accuracy" if key == "correct" else "f1"]
        )
    assert set(scores.flatten().tolist()) >= {0.0, 1.0}
    if metric == "f1":  # partly right answers score between 0 and 1 (F1, not exact match)
        assert any(0 < s < 1 for s in scores.flatten().tolist())


def _benefit_adapter(task, out):
    """A trained benefit run's adapter (ranks 0, 2, 4, 8, one scale, random ranks, nested
    training), its weights then made random so that every rank answers differently."""
    cfg = load_config(
        None,
        [
            f"output_dir={out}",
            "name=run",
            "model.family=causal_lm",
            "model.source=random:tiny",
            f"data.corpus={task}",
            "train.batch_size=4",
            "train.max_steps=2",
            "train.warmup_steps=1",
            "train.lr=1e-2",
            f"adapter.ranks={RANKS}",
            "adapter.scaling=nested",
            "routing.mode=random",
            "train.nested={prob: 1.0, mode: random, weight: 1.0}",
        ],
    )
    adapter = train(cfg, progress=False)
    model, _ = FAMILY.load("random:tiny")
    load_adapter(model, adapter)
    randomize_adapters(model, b_scale=0.3)
    save_adapter(model, adapter)
    return adapter


def _eval_at(task, adapter, rank, out):
    """``flexispeech eval`` of the validation split, every question at ``rank``: id -> example."""
    args = ["eval", "--data", str(task), "--adapter", str(adapter), "--split", "validation"]
    assert (
        main([*args, "--rank", str(rank), "--max-new-tokens", "6", "--batch-size", "3", "--out", str(out)])
        == 0
    )
    return {e["id"]: e for e in json.loads((out / "results.json").read_text())["examples"]}


def test_calibrate_on_a_text_task_fits_a_router_to_each_question_and_resumes(
    tmp_path, capsys, monkeypatch
) -> None:
    task = prepare_qa(tmp_path / "qa", n_train=8, n_validation=8, n_test=2, seed=1)
    signals = [
        "signals",
        str(task),
        "--model",
        "random:tiny",
        "--max-new-tokens",
        "2",
        "--label-splits",
        "train",
    ]
    assert main([*signals, "--splits", "train"]) == 0
    adapter = _benefit_adapter(task, tmp_path / "run")
    args = ["calibrate", str(adapter), "--data", str(task), "--batch-size", "3", "--max-new-tokens", "6"]
    capsys.readouterr()
    assert main(args) == 2  # no signals cached on validation yet: says which command caches them
    assert (
        f"run `flexispeech signals {task} --splits validation --model random:tiny` first"
        in capsys.readouterr().err
    )
    assert main([*signals, "--splits", "validation"]) == 0
    assert main([*args, "--split", "test"]) == 2
    assert "never on the test split" in capsys.readouterr().err

    # Gold answers that some ranks give and others do not: row i's is its answer at rank
    # RANKS[i % 4], on odd rows with a word more (partly right: F1 between 0 and 1).
    first = {r: _eval_at(task, adapter, r, tmp_path / f"first_r{r}") for r in RANKS}
    rows = load_text_task(task, "validation")
    golds = []
    for i, qid in enumerate(rows["id"]):
        answer = first[RANKS[i % 4]][qid]["hyp"]
        golds.append([answer + (" zebra" if i % 2 else "")])
    add_task_columns(task, "validation", {"answers": golds})
    evals = {r: _eval_at(task, adapter, r, tmp_path / f"eval_r{r}") for r in RANKS}  # scored on the new golds
    ids = list(rows["id"])
    eval_scores = torch.tensor([[evals[r][q]["f1"] for r in RANKS] for q in ids], dtype=torch.float64)
    assert len({tuple(c) for c in eval_scores.T.tolist()}) > 1  # the ranks score differently

    out = tmp_path / "benefit"
    assert main([*args, "--out", str(out), "--target-mean-rank", "4"]) == 0
    printed = capsys.readouterr().out
    assert "f1 by rank r0" in printed and "labels (smallest rank with the highest f1)" in printed
    summary = json.loads((tmp_path / "run" / "calibrate_validation" / "summary.json").read_text())
    router = json.loads((out / "router.json").read_text())
    assert (router["type"] == "fixed") == summary["fallback_to_constant"]
    if router["type"] == "learned":
        assert router["ranks"] == RANKS and router["features"] == list(TEXT_FEATURES)
    assert summary["metric"] == "f1" and summary["task"] == "qa" and summary["n"] == 8
    assert summary["features"] == list(TEXT_FEATURES) and summary["ranks"] == RANKS
    # the answers calibrate decoded are eval's at every rank, and so are their scores
    cache = tmp_path / "run" / "calibrate_validation" / "decodes.jsonl"
    lines = cache.read_text().splitlines()
    cached = {e["id"]: e["hyps"] for e in map(json.loads, lines[1:])}
    assert cached == {q: {str(r): evals[r][q]["hyp"] for r in RANKS} for q in ids}
    for j, r in enumerate(RANKS):
        assert summary["score_by_rank"][str(r)] == pytest.approx(float(eval_scores[:, j].mean()))
    # ... and the router was fit and judged on 1 - eval's score, question by question
    errors = 1.0 - eval_scores
    labels = benefit_labels(errors, RANKS)
    assert summary["label_histogram"] == {str(r): int((labels == r).sum()) for r in RANKS}
    best = summary["best_constant_rank"]
    assert best <= 4 and summary["best_constant_errors"] == pytest.approx(
        float(errors[:, RANKS.index(best)].sum())
    )
    assert summary["oracle_score"] == pytest.approx(float(eval_scores.max(dim=1).values.mean()))
    assert summary["routed_mean_rank"] <= 4.0

    # A killed run: three questions and half a line kept; the rerun answers only the rest.
    cache.write_text("\n".join(lines[:4]) + "\n" + lines[4][:10])
    decoded = []

    def counting(*a, **kw):
        decoded.extend(kw["indices"])
        return decode_split(*a, **kw)

    decode_split = text_benefit.decode_split
    monkeypatch.setattr(text_benefit, "decode_split", counting)
    assert main([*args, "--out", str(out), "--target-mean-rank", "4"]) == 0
    assert len(decoded) == 5 * len(RANKS)  # five questions, once at each rank
    assert cache.read_text().splitlines()[:4] == lines[:4]
    assert sorted(cache.read_text().splitlines()[1:]) == sorted(lines[1:])  # the same answers, none twice
    assert json.loads((tmp_path / "run" / "calibrate_validation" / "summary.json").read_text()) == summary
    decoded.clear()
    # default --out: the adapter's own router is replaced, the weights are not; nothing is decoded again
    weights = (adapter / "adapter_model.safetensors").read_bytes()
    assert main(args + ["--target-mean-rank", "4"]) == 0
    assert decoded == [] and (adapter / "adapter_model.safetensors").read_bytes() == weights
    assert json.loads((adapter / "router.json").read_text()) == router
    assert main([*args, "--audio-ctx", "100"]) == 2
    assert "--audio-ctx: applies to speech" in capsys.readouterr().err


def test_calibrate_help_names_text_tasks(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["calibrate", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "on a text task (math, qa) each question's error at a rank is 1 - its score" in out
    assert "--max-new-tokens" in out
