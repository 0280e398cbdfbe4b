"""Property tests of router calibration: a threshold router calibrated to a target mean
rank reaches it on any spread of scores; ties are never split; labels follow difficulty."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from flexispeech.lora.calibration import rank_labels
from flexispeech.lora.router import ThresholdRouter

PROPERTY = settings(max_examples=50, deadline=None)
rank_sets = st.lists(st.integers(0, 32), min_size=2, max_size=5, unique=True).map(sorted)
distinct_scores = st.lists(
    st.integers(-(10**6), 10**6), min_size=60, max_size=200, unique=True
)  # distinct after standardising
tied_scores = st.lists(st.sampled_from([-2.0, 0.0, 0.5, 3.0]), min_size=1, max_size=300)


@PROPERTY
@given(ranks=rank_sets, scores=distinct_scores, frac=st.floats(0.0, 1.0))
def test_calibration_reaches_the_target_mean_rank(ranks: list[int], scores: list[float], frac: float) -> None:
    target = ranks[0] + frac * (ranks[-1] - ranks[0])
    s = {"x": torch.tensor(scores, dtype=torch.float64)}
    router = ThresholdRouter(ranks, weights={"x": 1.0}).calibrate(s, target_mean_rank=target)
    got = router(s).double().mean().item()
    # Quantile thresholds place each boundary within one example of its share.
    tol = (ranks[-1] - ranks[0]) * (len(ranks) - 1) / len(scores) + 1e-6
    assert abs(got - target) <= tol, (got, target, tol)


@PROPERTY
@given(ranks=rank_sets, scores=tied_scores, frac=st.floats(0.0, 1.0), weight=st.sampled_from([1.0, -1.0]))
def test_heavy_ties_route_monotonically_and_never_split(
    ranks: list[int], scores: list[float], frac: float, weight: float
) -> None:
    target = ranks[0] + frac * (ranks[-1] - ranks[0])
    s = {"x": torch.tensor(scores, dtype=torch.float64)}
    router = ThresholdRouter(ranks, weights={"x": weight}).calibrate(s, target_mean_rank=target)
    out = router(s)
    assert set(out.tolist()) <= set(ranks)
    by_score: dict[float, set[int]] = {}
    for v, r in zip(scores, out.tolist()):
        by_score.setdefault(v, set()).add(r)
    assert all(len(rs) == 1 for rs in by_score.values())  # equal inputs, equal ranks
    ordered = [next(iter(by_score[v])) for v in sorted(by_score, key=lambda v: weight * v)]
    assert ordered == sorted(ordered)  # harder (higher score) never gets a lower rank


@PROPERTY
@given(
    ranks=rank_sets,
    difficulty=st.lists(st.floats(0.0, 2.0), min_size=1, max_size=200),
    frac=st.floats(0.0, 1.0),
)
def test_rank_labels_are_monotone_in_difficulty(
    ranks: list[int], difficulty: list[float], frac: float
) -> None:
    d = torch.tensor(difficulty, dtype=torch.float64)
    labels = rank_labels(d, ranks, target_mean_rank=ranks[0] + frac * (ranks[-1] - ranks[0]))
    order = torch.argsort(d, stable=True)
    assert labels[order].tolist() == sorted(labels.tolist())
    assert set(labels.tolist()) <= set(ranks)
