"""Scoring and tables of text-task evaluations on hand-written predictions."""

from __future__ import annotations

import pytest

from flexispeech.evaluation.report import compare_table, markdown_summary
from flexispeech.evaluation.text_report import score_record, summarize_text


def rec(hyp: str, golds: list[str], difficulty: int, rank: int | None = None) -> dict:
    return {
        "id": hyp,
        "hyp": hyp,
        "golds": golds,
        "ref": golds[0],
        "difficulty": difficulty,
        "rank": rank,
        "signals": {},
    }


def test_score_record_math_and_qa() -> None:
    math = score_record(rec("First 12 + 3 = 15, then 15 * 2 = 30.\n#### 30", ["30"], 2))
    assert math["correct"] == 1.0 and math["pred_number"] == "30" and math["em"] == 0.0
    wrong = score_record(rec("The answer is 31.", ["30"], 2))
    assert wrong["correct"] == 0.0 and wrong["pred_number"] == "31"
    qa = score_record(rec("The Kestrel Works", ["Kestrel Works", "Kestrel"], 1))
    assert qa["em"] == 1.0 and qa["f1"] == 1.0  # articles and case are normalised away
    partial = score_record(rec("Mira Voss", ["Mira Lund"], 1))
    assert partial["em"] == 0.0 and partial["f1"] == pytest.approx(0.5)


def test_summarize_by_difficulty_and_ranks() -> None:
    records = [
        rec("#### 5", ["5"], 1, 2),
        rec("#### 6", ["7"], 1, 2),
        rec("so 40", ["40"], 3, 8),
        rec("", ["1"], 3, 8),
    ]
    result = summarize_text(records, "accuracy", decode_s=1.234, name="flexi", task="math")
    assert result["overall"]["accuracy"] == 0.5 and result["n"] == 4
    assert result["by_difficulty"]["1"] == {
        "n": 2,
        "accuracy": 0.5,
        "em": 0.5,
        "f1": 0.5,
        "mean_rank": 2.0,
    }  # "#### 5" normalises to "5"
    assert (
        result["by_difficulty"]["3"]["accuracy"] == 0.5 and result["by_difficulty"]["3"]["mean_rank"] == 8.0
    )
    assert result["rank_histogram"] == {"2": 2, "8": 2} and result["mean_rank"] == 5.0
    assert result["active_params_mean"] == 0.0  # no model given: no adapter to count
    md = markdown_summary(result)
    assert md.startswith("# flexi (math)") and "| 4 | 50.0 | 5.00 |" in md and "| 3 | 2 | 50.0 | 8.00 |" in md


def test_compare_table_for_qa() -> None:
    a = summarize_text([rec("Tobin", ["Tobin"], 1), rec("no", ["yes"], 2)], "f1", 1.0, name="base", task="qa")
    b = summarize_text(
        [rec("Tobin", ["Tobin"], 1, 4), rec("yes", ["yes"], 2, 8)], "f1", 1.0, name="flexi", task="qa"
    )
    b["train"] = {"train_time_s": 42.4}
    lines = compare_table([a, b]).splitlines()
    assert lines[0] == "| method | EM % | F1 % | F1 L1 | F1 L2 | mean rank | active params | train time s |"
    assert lines[2] == "| base | 50.0 | 50.0 | 100.0 | 0.0 | 0.00 | 0 | – |"
    assert lines[3] == "| flexi | 100.0 | 100.0 | 100.0 | 100.0 | 6.00 | 0 | 42 |"


def test_compare_rescore_rewrites_text_results_from_their_predictions(tmp_path, capsys) -> None:
    import json

    from flexispeech.cli import main
    from flexispeech.evaluation.evaluate import write_results

    records = [
        rec("7 + 1 = 8\n#### 8user\nOne of 2 parts: 8 / 2 = 4\n#### 4", ["8"], 1, 2),
        rec("#### 3", ["5"], 2, 8),
    ]
    result = summarize_text(records, "accuracy", 1.0, name="flexi", task="math")
    result |= {"adapter_params_total": 1000, "active_params_mean": 500.0}  # as counted on the model
    result["overall"]["accuracy"] = 0.0  # as an older extraction scored it (the last "####")
    result["examples"][0]["correct"] = 0.0
    (tmp_path / "train_summary.json").write_text(json.dumps({"train_time_s": 12.0}))
    run = write_results(result, tmp_path / "eval_test")
    assert main(["compare", str(run), "--rescore"]) == 0
    assert "| flexi | 50.0 | 100.0 | 0.0 | 5.00 | 500 | 12 |" in capsys.readouterr().out
    saved = json.loads((run / "results.json").read_text())
    assert saved["overall"]["accuracy"] == 0.5 and saved["examples"][0]["correct"] == 1.0
    assert (
        saved["active_params_mean"] == 500.0
        and saved["rank_histogram"] == {"2": 1, "8": 1}
        and "train" not in saved
    )
    assert (run / "results.md").read_text().startswith("# flexi (math)")
