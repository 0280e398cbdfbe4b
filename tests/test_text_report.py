"""Scoring and tables of text-task evaluations on hand-written predictions."""

from __future__ import annotations

import pytest

from flexispeech.report import compare_table, markdown_summary
from flexispeech.text_report import score_record, summarize_text


def rec(hyp: str, golds: list[str], difficulty: int, rank: int | None = None) -> dict:
    return {"id": hyp, "hyp": hyp, "golds": golds, "ref": golds[0], "difficulty": difficulty, "rank": rank, "signals": {}}


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
    records = [rec("#### 5", ["5"], 1, 2), rec("#### 6", ["7"], 1, 2), rec("so 40", ["40"], 3, 8), rec("", ["1"], 3, 8)]
    result = summarize_text(records, "accuracy", decode_s=1.234, name="flexi", task="math")
    assert result["overall"]["accuracy"] == 0.5 and result["n"] == 4
    assert result["by_difficulty"]["1"] == {"n": 2, "accuracy": 0.5, "em": 0.5, "f1": 0.5, "mean_rank": 2.0}  # "#### 5" normalises to "5"
    assert result["by_difficulty"]["3"]["accuracy"] == 0.5 and result["by_difficulty"]["3"]["mean_rank"] == 8.0
    assert result["rank_histogram"] == {"2": 2, "8": 2} and result["mean_rank"] == 5.0
    assert result["active_params_mean"] == 0.0  # no model given: no adapter to count
    md = markdown_summary(result)
    assert md.startswith("# flexi (math)") and "| 4 | 50.0 | 5.00 |" in md and "| 3 | 2 | 50.0 | 8.00 |" in md


def test_compare_table_for_qa() -> None:
    a = summarize_text([rec("Tobin", ["Tobin"], 1), rec("no", ["yes"], 2)], "f1", 1.0, name="base", task="qa")
    b = summarize_text([rec("Tobin", ["Tobin"], 1, 4), rec("yes", ["yes"], 2, 8)], "f1", 1.0, name="flexi", task="qa")
    b["train"] = {"train_time_s": 42.4}
    lines = compare_table([a, b]).splitlines()
    assert lines[0] == "| method | EM % | F1 % | F1 L1 | F1 L2 | mean rank | active params | train time s |"
    assert lines[2] == "| base | 50.0 | 50.0 | 100.0 | 0.0 | 0.00 | 0 | – |"
    assert lines[3] == "| flexi | 100.0 | 100.0 | 100.0 | 100.0 | 6.00 | 0 | 42 |"
