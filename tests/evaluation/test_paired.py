"""Paired comparisons: exact sign-test values, bootstrap intervals, the table against a baseline."""

from __future__ import annotations

import pytest

from flexispeech.errors import FlexispeechError
from flexispeech.evaluation.paired import paired_difference, paired_table, sign_test
from flexispeech.evaluation.text_report import summarize_text


def test_sign_test_exact_values() -> None:
    assert sign_test(0, 0) == 1.0
    assert sign_test(5, 0) == pytest.approx(2 / 32)  # two-sided: 2 * (1/2)^5
    assert sign_test(3, 3) == 1.0
    assert sign_test(1, 9) == pytest.approx(2 * (1 + 10) / 1024)


def test_paired_difference_counts_and_interval() -> None:
    a = [1, 0, 1, 1, 0, 0, 1, 0]
    b = [1, 1, 1, 0, 1, 1, 1, 0]
    d = paired_difference(a, b)
    assert (d.n, d.wins, d.losses, d.ties) == (8, 3, 1, 4)
    assert d.delta == pytest.approx(2 / 8) and d.ci_low <= d.delta <= d.ci_high
    assert d.p_sign == pytest.approx(sign_test(3, 1))
    assert paired_difference(a, b) == d  # seeded
    same = paired_difference(a, a)
    assert (same.delta, same.ci_low, same.ci_high, same.p_sign) == (0.0, 0.0, 0.0, 1.0)
    with pytest.raises(FlexispeechError):
        paired_difference([1.0], [1.0, 0.0])


def test_bootstrap_interval_matches_a_hand_computed_case() -> None:
    """One win in four questions: a resample of the 4 differences (0, 0, 0, 1) has mean k/4
    with k ~ Binomial(4, 1/4), so P(mean = 0) = (3/4)^4 = 0.32 > 2.5% and
    P(mean <= 1/2) = 1 - 4 (1/4)^3 (3/4) - (1/4)^4 = 0.949 < 97.5% <= P(mean <= 3/4) = 0.996:
    the 95% percentile interval is [0, 3/4], whatever the seed (the margins are over five
    standard deviations of 2000 resamples)."""
    a, b = [1, 0, 1, 0], [1, 0, 1, 1]
    for seed in (0, 1, 2):
        d = paired_difference(a, b, seed=seed)
        assert (d.delta, d.ci_low, d.ci_high) == (0.25, 0.0, 0.75)
    # Two questions, differences (0, 1): resampled means 0, 1/2, 1 with probabilities 1/4, 1/2,
    # 1/4, so the interval is the whole range [0, 1].
    d = paired_difference([0, 0], [0, 1])
    assert (d.delta, d.ci_low, d.ci_high) == (0.5, 0.0, 1.0)
    # Pairing matters: the same scores unpaired would resample a and b independently.
    # Here b = a + 0.1 exactly, so every paired resample has mean 0.1.
    d = paired_difference([0.0, 0.3, 0.9, 0.5], [0.1, 0.4, 1.0, 0.6])
    assert d.ci_low == pytest.approx(0.1) and d.ci_high == pytest.approx(0.1)


def _run(name: str, hyps: list[str]) -> dict:
    golds = ["1", "2", "3", "4"]
    records = [
        {"id": f"q{i}", "hyp": h, "golds": [g], "ref": g, "difficulty": 1, "rank": None, "signals": {}}
        for i, (h, g) in enumerate(zip(hyps, golds))
    ]
    return summarize_text(records, "accuracy", 1.0, name=name, task="math")


def test_paired_table_against_a_baseline() -> None:
    base, ours = (
        _run("static", ["#### 1", "#### 0", "#### 0", "#### 4"]),
        _run("flexi", ["#### 1", "#### 2", "#### 3", "#### 0"]),
    )
    lines = paired_table([base, ours], "static").splitlines()
    assert lines[0].startswith("| method vs static | Δ correct (points) |")
    assert lines[2].startswith("| flexi | +25.0 | [") and lines[2].endswith("| 2 | 1 | 1 | 1.000 |")
    with pytest.raises(FlexispeechError, match="no run of that name"):
        paired_table([base, ours], "r8")
    other = _run("other", ["1", "2", "3", "4"])
    other["examples"][0]["id"] = "elsewhere"
    with pytest.raises(FlexispeechError, match="same questions"):
        paired_table([base, other], "static")
