"""Paired comparison of two evaluations on the same examples: is a gap more than noise?

Two methods scored on the same questions differ on a few of them; the unpaired scores
hide how few. ``paired_difference`` counts the questions each method wins, gives the
mean per-question difference with a paired bootstrap interval and an exact sign-test
p-value (scipy's ``binomtest``), and ``paired_table`` lays that out for text-task runs
against one baseline.

The interval is scipy's paired bootstrap (``scipy.stats.bootstrap(paired=True)``: the
examples are resampled, each with both of its scores), seeded, with the *percentile*
method rather than scipy's default BCa: two runs that score alike on every question are a
common comparison here, and BCa's acceleration is undefined when every difference is
equal (scipy returns NaN); on 0/1 scores of a few hundred questions the two intervals
differ by less than the resampling noise.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from flexispeech.errors import FlexispeechError

N_BOOTSTRAP = 2000  # resamples: enough for a stable 95% interval at a few hundred questions


@dataclass(frozen=True)
class PairedDifference:
    """``b - a`` over paired per-example scores.

    Attributes:
        n: examples.
        delta: mean of ``b - a`` (in the scores' units; accuracy 0/1 gives a fraction).
        ci_low, ci_high: 95% percentile-bootstrap interval of ``delta`` (examples resampled).
        wins: examples where b scores higher; losses: lower; ties: equal.
        p_sign: two-sided exact sign test of wins against losses (ties dropped).
    """

    n: int
    delta: float
    ci_low: float
    ci_high: float
    wins: int
    losses: int
    ties: int
    p_sign: float


def sign_test(wins: int, losses: int) -> float:
    """Two-sided exact binomial p-value of ``wins`` vs ``losses`` under p = 1/2 (1.0 when
    there are neither)."""
    from scipy.stats import binomtest

    n = wins + losses
    return 1.0 if n == 0 else float(binomtest(wins, n, 0.5).pvalue)


def _mean_difference(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
    """Mean of ``b - a`` along ``axis``: the statistic scipy's bootstrap resamples."""
    return np.mean(b - a, axis=axis)


def paired_difference(
    a: Sequence[float], b: Sequence[float], seed: int = 0, n_boot: int = N_BOOTSTRAP
) -> PairedDifference:
    """Compare per-example scores ``a`` and ``b`` (same examples, same order); the interval
    is a 95% paired percentile bootstrap of ``n_boot`` resamples, seeded by ``seed``."""
    from scipy.stats import bootstrap

    if len(a) != len(b) or not a:
        raise FlexispeechError(
            f"paired comparison needs two equal, non-empty score lists (got {len(a)} and {len(b)})"
        )
    a_arr, b_arr = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    diff = b_arr - a_arr
    ci = bootstrap(
        (a_arr, b_arr),
        _mean_difference,
        paired=True,
        vectorized=True,
        n_resamples=n_boot,
        confidence_level=0.95,
        method="percentile",
        rng=np.random.default_rng(seed),
    ).confidence_interval
    wins, losses = int((diff > 0).sum()), int((diff < 0).sum())
    return PairedDifference(
        n=len(diff),
        delta=float(diff.mean()),
        ci_low=float(ci.low),
        ci_high=float(ci.high),
        wins=wins,
        losses=losses,
        ties=len(diff) - wins - losses,
        p_sign=sign_test(wins, losses),
    )


def _scores(result: dict[str, Any], key: str) -> dict[str, float]:
    return {str(e["id"]): float(e[key]) for e in result["examples"]}


def paired_table(results: Sequence[dict[str, Any]], baseline: str) -> str:
    """Every text run against the run named ``baseline``, question by question.

    The score is the task's headline metric per question (math: correct 0/1; QA: token F1).
    Raises FlexispeechError if no run has that name or the runs were not scored on the
    same questions.
    """
    named = {r["name"]: r for r in results}
    if baseline not in named:
        raise FlexispeechError(f"--baseline {baseline!r}: no run of that name (runs: {', '.join(named)})")
    key = "correct" if named[baseline]["metric"] == "accuracy" else "f1"
    base = _scores(named[baseline], key)
    lines = [
        f"| method vs {baseline} | Δ {key} (points) | 95% CI | better | worse | same | sign test p |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        if r["name"] == baseline:
            continue
        ours = _scores(r, key)
        if set(ours) != set(base):
            raise FlexispeechError(f"{r['name']} and {baseline} were not scored on the same questions")
        ids = sorted(base)
        d = paired_difference([base[i] for i in ids], [ours[i] for i in ids])
        lines.append(
            f"| {r['name']} | {100 * d.delta:+.1f} | [{100 * d.ci_low:+.1f}, {100 * d.ci_high:+.1f}] | "
            f"{d.wins} | {d.losses} | {d.ties} | {d.p_sign:.3f} |"
        )
    return "\n".join(lines) + "\n"
