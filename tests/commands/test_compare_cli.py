"""``flexispeech compare --baseline NAME``: question-by-question comparisons of text runs,
checked against a hand computation (the gap, questions better/worse/same, an exact sign
test written out with binomial coefficients). Runs are stored as ``flexispeech eval``
stores them (``summarize_text`` / ``summarize`` + ``write_results``), and once end to end
from two real evaluations."""

from __future__ import annotations

from math import comb
from pathlib import Path

import pytest

from flexispeech.cli import main
from flexispeech.evaluation.evaluate import summarize, write_results
from flexispeech.evaluation.text_report import summarize_text


def sign_p(wins: int, losses: int) -> float:
    """Two-sided exact sign test by hand: twice the binomial(n, 1/2) tail at the smaller count."""
    n, k = wins + losses, min(wins, losses)
    return 1.0 if n == 0 else min(1.0, 2 * sum(comb(n, i) for i in range(k + 1)) / 2**n)


def text_run(root: Path, name: str, hyps: list[str], golds: list[str], metric: str) -> Path:
    """A text evaluation's results.json / results.md, as ``flexispeech eval`` writes them."""
    records = [
        {
            "id": f"q{i}",
            "hyp": h,
            "golds": [g],
            "ref": g,
            "difficulty": 1 + i % 2,
            "rank": None,
            "signals": {},
        }
        for i, (h, g) in enumerate(zip(hyps, golds))
    ]
    return write_results(summarize_text(records, metric, 1.0, name=name, task="t"), root / name)


def paired_rows(out: str) -> dict[str, list[str]]:
    """method -> the cells of its row in the paired table (after its header line)."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| method vs "))
    return {
        cells[0]: cells[1:]
        for cells in ([c.strip() for c in line.strip("|").split("|")] for line in lines[start + 2 :])
        if cells[0]
    }


def check_row(cells: list[str], delta_points: float, wins: int, losses: int, ties: int) -> None:
    delta, ci, better, worse, same, p = cells
    assert float(delta) == pytest.approx(delta_points, abs=0.05) and delta.startswith(
        "+" if delta_points >= 0 else "-"
    )
    lo, hi = (float(x) for x in ci.strip("[]").split(","))
    assert lo <= float(delta) <= hi
    assert (int(better), int(worse), int(same)) == (wins, losses, ties)
    assert float(p) == pytest.approx(sign_p(wins, losses), abs=5e-4)


def test_math_accuracy_against_a_baseline(tmp_path: Path, capsys) -> None:
    golds = [str(i) for i in range(1, 11)]
    patterns = {  # 1 = correct on that question
        "static": [1, 1, 0, 0, 0, 0, 1, 0, 1, 0],
        "flexi": [1, 1, 1, 1, 1, 1, 0, 1, 1, 0],  # 5 better, 1 worse, 4 same
        "tiny": [0, 0, 0, 0, 0, 0, 0, 0, 1, 0],  # 0 better, 3 worse, 7 same
    }
    runs = [
        text_run(tmp_path, name, [f"#### {g if ok else 0}" for ok, g in zip(p, golds)], golds, "accuracy")
        for name, p in patterns.items()
    ]
    assert main(["compare", *map(str, runs), "--baseline", "static", "--out", str(tmp_path / "cmp")]) == 0
    out = capsys.readouterr().out
    assert "| method vs static | Δ correct (points) |" in out
    rows = paired_rows(out)
    assert set(rows) == {"flexi", "tiny"}  # the baseline is not compared with itself
    check_row(rows["flexi"], +40.0, 5, 1, 4)
    check_row(rows["tiny"], -30.0, 0, 3, 7)
    assert float(rows["tiny"][1].strip("[]").split(",")[1]) <= 0  # never better: the interval stays <= 0
    assert sign_p(5, 1) == pytest.approx(14 / 64) and sign_p(0, 3) == pytest.approx(2 / 8)  # the hand values
    assert (tmp_path / "cmp" / "compare.md").read_text() == out


def test_qa_f1_against_a_baseline(tmp_path: Path, capsys) -> None:
    golds = ["red apple", "blue", "green tree house", "seven", "Oslo"]
    base = text_run(tmp_path, "base", ["red apple", "", "green", "seven", "Oslo"], golds, "f1")
    ours = text_run(tmp_path, "ours", ["red", "blue", "green tree house", "six", "Oslo"], golds, "f1")
    # token F1 per question by hand: base 1, 0, 1/2 (P 1, R 1/3), 1, 1; ours 2/3 (P 1, R 1/2), 1, 1, 0, 1
    diffs = [2 / 3 - 1, 1 - 0, 1 - 1 / 2, 0 - 1, 1 - 1]
    assert main(["compare", str(base), str(ours), "--baseline", "base"]) == 0
    out = capsys.readouterr().out
    assert "| method vs base | Δ f1 (points) |" in out
    check_row(paired_rows(out)["ours"], 100 * sum(diffs) / len(diffs), 2, 2, 1)


def test_baseline_end_to_end_from_two_evaluations(tmp_path: Path, capsys) -> None:
    """Two real ``flexispeech eval`` runs of one model: every question the same, Δ 0, p 1."""
    from data_prep.math import prepare_math

    task = prepare_math(tmp_path / "math", n_train=2, n_validation=1, n_test=4, seed=0)
    runs = []
    for name in ("first", "second"):
        runs.append(tmp_path / name)
        assert (
            main(
                [
                    "eval",
                    "--data",
                    str(task),
                    "--model",
                    "random:tiny",
                    "--max-new-tokens",
                    "3",
                    "--name",
                    name,
                    "--out",
                    str(runs[-1]),
                ]
            )
            == 0
        )
    capsys.readouterr()
    assert main(["compare", *map(str, runs), "--baseline", "first"]) == 0
    check_row(paired_rows(capsys.readouterr().out)["second"], 0.0, 0, 0, 4)
    # one run named twice (its directory and its file) is compared once, with a warning
    assert main(["compare", *map(str, runs), str(runs[1] / "results.json"), "--baseline", "first"]) == 0
    out, err = capsys.readouterr()
    assert "1 run(s) given twice" in err
    assert list(paired_rows(out)) == ["second"]


def test_baseline_errors_are_one_line(tmp_path: Path, capsys, error_line) -> None:
    golds = ["1", "2"]
    a = text_run(tmp_path, "a", ["#### 1", "#### 2"], golds, "accuracy")
    assert (
        main(
            [
                "compare",
                str(a),
                str(text_run(tmp_path, "b", ["#### 1", "#### 0"], golds, "accuracy")),
                "--baseline",
                "r8",
            ]
        )
        == 2
    )
    error_line("compare", "'r8'", "a, b")
    other = text_run(tmp_path, "other", ["#### 1"], ["1"], "accuracy")
    assert main(["compare", str(a), str(other), "--baseline", "a"]) == 2
    error_line("compare", "other and a", "same questions")
    # speech runs: an unknown baseline is one line too (their paired tables are tested in
    # tests/training/test_eval_study.py)
    speech = []
    for name in ("s1", "s2"):
        records = [
            {
                "id": "u0",
                "ref": "the fox",
                "hyp": "the box",
                "duration": 1.0,
                "snr_db": 10.0,
                "voice": "v",
                "seen_voice": True,
                "rank": None,
            }
        ]
        speech.append(write_results(summarize(records, str.lower, 1.0, name=name), tmp_path / name))
    assert main(["compare", *map(str, speech)]) == 0  # the plain table works
    capsys.readouterr()
    assert main(["compare", *map(str, speech), "--baseline", "r8"]) == 2
    error_line("compare", "'r8'", "s1, s2")
