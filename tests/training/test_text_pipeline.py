"""The whole text-task pipeline on a random-initialised tiny causal LM, in seconds:
prepare math/qa -> signals (surface counts, prompt perplexity, base answers) -> train
with every routing mode -> eval -> compare."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from data_prep.math import prepare_math
from data_prep.qa import prepare_qa
from flexispeech.cli import main
from flexispeech.data.text import TextTaskSplit, open_split
from flexispeech.data.text_format import load_text_task
from flexispeech.errors import ConfigError
from flexispeech.lora.io import read_adapter_config
from flexispeech.models.causal_lm import FAMILY
from flexispeech.training.config import load_config
from flexispeech.training.loop import train

SIGNALS = [
    "n_words",
    "n_chars",
    "n_digits",
    "n_numbers",
    "n_operators",
    "n_sentences",
    "n_question_words",
    "prompt_ppl",
]


@pytest.fixture(scope="module")
def math_task(tmp_path_factory):
    out = prepare_math(tmp_path_factory.mktemp("math") / "math", n_train=24, n_validation=2, n_test=8, seed=1)
    args = [
        str(out),
        "--model",
        "random:tiny",
        "--splits",
        "train,test",
        "--batch-size",
        "8",
        "--max-new-tokens",
        "4",
    ]
    assert main(["signals", *args]) == 0
    return out


@pytest.fixture(scope="module")
def qa_task(tmp_path_factory):
    out = prepare_qa(tmp_path_factory.mktemp("qa") / "qa", n_train=16, n_validation=2, n_test=6, seed=1)
    assert (
        main(
            ["signals", str(out), "--model", "random:tiny", "--splits", "train,test", "--max-new-tokens", "4"]
        )
        == 0
    )
    return out


def config(task, out, mode: str, **extra):
    overrides = [
        f"output_dir={out}",
        f"name={mode}",
        "model.family=causal_lm",
        "model.source=random:tiny",
        f"data.corpus={task}",
        "train.batch_size=4",
        "train.max_steps=2",
        "train.warmup_steps=1",
        "train.log_every=1",
        "train.lr=1e-2",
        "adapter.ranks=[2, 4, 8]",
        f"routing.mode={mode}",
        "routing.weights={n_operators: 1.0, prompt_ppl: 1.0}",
        "routing.features=[n_words, n_digits, n_operators, prompt_ppl]",
        "routing.difficulty=base_difficulty",
    ] + [f"{k}={v}" for k, v in extra.items()]
    return load_config(None, overrides)


def test_signals_are_cached_with_base_answers(math_task) -> None:
    ds = load_text_task(math_task, "train")
    split = open_split(math_task, "train")
    assert isinstance(split, TextTaskSplit) and sorted(split.signal_names) == sorted(SIGNALS)
    assert split.metric == "accuracy" and split.task_name == "math"
    row = ds[0]
    assert row["signal_n_words"] == len(row["prompt"].split())  # generated prompts have no bare symbols
    assert all(np.isfinite(ds["signal_prompt_ppl"]))
    assert all(c in (0.0, 1.0) for c in ds["base_correct"])
    # difficulty = 1 - correct plus a tie-break below 0.01 that follows the gold answer's NLL
    for c, d in zip(ds["base_correct"], ds["base_difficulty"]):
        assert 0 <= d - (1 - c) < 0.01
    assert len(set(ds["base_difficulty"])) == len(ds)  # ties broken: every value distinct
    wrong = [i for i, c in enumerate(ds["base_correct"]) if c == 0.0]
    by_nll = sorted(wrong, key=lambda i: ds["base_gold_nll"][i])
    assert by_nll == sorted(wrong, key=lambda i: ds["base_difficulty"][i])
    # base_gold_nll is the base model's training loss on the row's answer, summed, not averaged
    model, tok = FAMILY.load("random:tiny")
    batch = FAMILY.collate(tok, [split[0]])
    n_tokens = int((batch["labels"] != -100).sum())
    with torch.no_grad():
        assert ds["base_gold_nll"][0] == pytest.approx(FAMILY.loss(model, batch).item() * n_tokens, rel=1e-5)
    assert "test" in json.loads((math_task / "task.json").read_text())["splits"]


def test_text_split_examples_and_target(math_task) -> None:
    answer = open_split(math_task, "train", max_examples=5, seed=3)
    solution = open_split(math_task, "train", max_examples=5, seed=3, target="solution")
    assert len(answer) == 5 and [r["id"] for r in answer.rows] == sorted(r["id"] for r in answer.rows)
    ex, ex_sol = answer[0], solution[0]
    assert ex.prompt == answer.rows[0]["prompt"] and ex.text == answer.rows[0]["answer"]
    assert ex_sol.text.endswith(f"#### {answer.rows[0]['answer']}")
    assert set(ex.signals) == set(SIGNALS) and answer.durations[0] == len(ex.prompt.split())


@pytest.mark.parametrize("mode", ["fixed", "threshold", "learned", "inconsistent"])
def test_every_routing_mode_trains_on_text(math_task, tmp_path, mode: str) -> None:
    adapter = train(
        config(
            math_task,
            tmp_path / mode,
            mode,
            **({"routing.inference_router": "learned"} if mode == "inconsistent" else {}),
        ),
        progress=False,
    )
    summary = json.loads((tmp_path / mode / "train_summary.json").read_text())
    assert summary["steps"] == 2 and summary["examples_seen"] == 8
    log = [json.loads(line) for line in (tmp_path / mode / "train_log.jsonl").read_text().splitlines()]
    assert all(np.isfinite(e["loss"]) for e in log)
    assert read_adapter_config(adapter)["config"]["metadata"]["family"] == "causal_lm"
    hist = summary["train_rank_histogram"]
    assert hist == {"8": 8} if mode == "fixed" else len(hist) > 1


def test_eval_and_compare_on_both_tasks(math_task, qa_task, tmp_path, capsys) -> None:
    for task, metric in ((math_task, "accuracy"), (qa_task, "f1")):
        runs = []
        base = tmp_path / task.name / "base"
        assert (
            main(
                [
                    "eval",
                    "--data",
                    str(task),
                    "--model",
                    "random:tiny",
                    "--out",
                    str(base),
                    "--max-new-tokens",
                    "4",
                ]
            )
            == 0
        )
        runs.append(base)
        for mode in ("fixed", "threshold"):
            adapter = train(config(task, tmp_path / task.name / mode, mode), progress=False)
            assert (
                main(
                    [
                        "eval",
                        "--data",
                        str(task),
                        "--adapter",
                        str(adapter),
                        "--max-new-tokens",
                        "4",
                        "--batch-size",
                        "3",
                    ]
                )
                == 0
            )
            runs.append(tmp_path / task.name / mode / "eval_test")
        res = json.loads((runs[-1] / "results.json").read_text())
        n_test = len(load_text_task(task, "test"))
        assert res["kind"] == "text" and res["metric"] == metric and res["n"] == n_test
        assert (
            sum(res["rank_histogram"].values()) == n_test
            and 0 < res["active_params_mean"] <= res["adapter_params_total"]
        )
        assert sum(s["n"] for s in res["by_difficulty"].values()) == n_test
        assert {e["id"] for e in res["examples"]} == set(load_text_task(task, "test")["id"])
        fixed = json.loads((runs[1] / "results.json").read_text())
        assert fixed["mean_rank"] == 8 and fixed["active_params_mean"] == fixed["adapter_params_total"]
        assert (runs[-1] / "results.md").read_text().startswith("# threshold")
        capsys.readouterr()
        assert main(["compare", *map(str, runs), "--out", str(tmp_path / task.name / "cmp")]) == 0
        table = capsys.readouterr().out.splitlines()
        head = "| method | accuracy % |" if metric == "accuracy" else "| method | EM % | F1 % |"
        assert (
            table[0].startswith(head)
            and table[2].startswith("| base |")
            and table[4].startswith("| threshold |")
        )
        assert (tmp_path / task.name / "cmp" / "ranks.png").is_file()


def test_decode_split_sorts_rows_by_rank_without_changing_results(math_task) -> None:
    from flexispeech.evaluation.evaluate import decode_split
    from flexispeech.lora.config import FlexiLoraConfig
    from flexispeech.lora.inject import inject
    from flexispeech.models.random_init import randomize_adapters

    model, tok = FAMILY.load("random:tiny")
    inject(model, FlexiLoraConfig(ranks=(0, 2, 8), target_modules=FAMILY.default_targets))
    randomize_adapters(model, b_scale=0.3)
    split = open_split(math_task, "test")
    pattern = torch.tensor([2, 0, 8, 2, 8, 0, 0, 2])  # unsorted within every batch of 4

    def router(signals, n):  # a rank per row, fixed by the row's word count (any function of signals will do)
        return pattern[signals["n_words"].long() % len(pattern)]

    batched, _ = decode_split(
        model, FAMILY, tok, split, router, batch_size=4, progress=False, max_new_tokens=5
    )
    alone, _ = decode_split(model, FAMILY, tok, split, router, batch_size=1, progress=False, max_new_tokens=5)
    assert len({r["rank"] for r in batched}) == 3
    assert [(r["id"], r["rank"], r["hyp"]) for r in batched] == [
        (r["id"], r["rank"], r["hyp"]) for r in alone
    ]


def test_decode_split_decodes_only_the_rows_asked_for_in_their_order(math_task) -> None:
    """``indices``: those rows only, their records in the order asked for (calibrate
    decodes one batch of questions at a time, at one rank after another)."""
    from flexispeech.evaluation.evaluate import decode_split
    from flexispeech.lora.config import FlexiLoraConfig
    from flexispeech.lora.inject import inject
    from flexispeech.lora.router import FixedRouter
    from flexispeech.models.random_init import randomize_adapters

    model, tok = FAMILY.load("random:tiny")
    inject(model, FlexiLoraConfig(ranks=(2, 8), target_modules=FAMILY.default_targets))
    randomize_adapters(model, b_scale=0.3)
    split = open_split(math_task, "test")
    whole, _ = decode_split(model, FAMILY, tok, split, FixedRouter(2), 4, progress=False, max_new_tokens=5)
    assert [r["id"] for r in whole] == [str(r["id"]) for r in split.rows]  # split order
    some, _ = decode_split(
        model, FAMILY, tok, split, FixedRouter(2), 4, progress=False, max_new_tokens=5, indices=[5, 0, 3]
    )
    assert [(r["id"], r["hyp"], r["rank"]) for r in some] == [
        (whole[i]["id"], whole[i]["hyp"], 2) for i in (5, 0, 3)
    ]


def test_label_splits_limit_the_base_answers_to_training_rows(tmp_path) -> None:
    task = prepare_qa(tmp_path / "qa", n_train=6, n_validation=1, n_test=4, seed=2)
    args = [str(task), "--model", "random:tiny", "--splits", "train,test", "--max-new-tokens", "3"]
    assert main(["signals", *args, "--label-splits", "train"]) == 0
    train_cols, test = load_text_task(task, "train").column_names, load_text_task(task, "test")
    assert {"base_answer", "base_gold_nll", "base_difficulty", "signal_prompt_ppl"} <= set(train_cols)
    assert "signal_prompt_ppl" in test.column_names and "base_answer" not in test.column_names
    ppl = list(test["signal_prompt_ppl"])
    assert main(["signals", *args]) == 0  # now every split gets labels; the cached ppl is kept
    test = load_text_task(task, "test")
    assert "base_answer" in test.column_names and list(test["signal_prompt_ppl"]) == ppl


def test_early_stopping_on_wer_is_for_speech_models(math_task, tmp_path) -> None:
    cfg = config(
        math_task,
        tmp_path / "wer",
        "fixed",
        **{"train.eval_every": 1, "train.early_stopping": "{patience: 1, metric: wer}"},
    )
    with pytest.raises(ConfigError, match="wer is for speech models, not the causal_lm family"):
        train(cfg, progress=False)
