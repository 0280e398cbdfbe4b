"""Calibration of routers: shares of examples per rank, and score thresholds that give them.

A router is calibrated to a target mean rank (``mean_rank_proportions`` turns it into a
share of examples per rank) or to explicit cumulative quantiles; ``quantile_thresholds``
turns the shares into score cut points. ``rank_labels`` applies the same cut to a
per-example difficulty, giving the labels a ``LearnedRouter`` is trained on.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from flexispeech.errors import ConfigError


def mean_rank_proportions(ranks: Sequence[int], target_mean_rank: float) -> list[float]:
    """Shares of examples per rank whose mean rank is ``target_mean_rank``.

    The shares are ``p_i ∝ exp(-λ r_i / r_max)`` with λ found by bisection: one smooth
    family that goes from "all at the top rank" to "all at the lowest", so any target in
    [min(ranks), max(ranks)] is reachable and neighbouring targets give neighbouring shares.
    """
    lo_r, hi_r = min(ranks), max(ranks)
    if not lo_r <= target_mean_rank <= hi_r:
        raise ConfigError(f"target mean rank {target_mean_rank} is outside [{lo_r}, {hi_r}]")
    r = torch.tensor(ranks, dtype=torch.float64) / hi_r

    def shares(lam: float) -> torch.Tensor:
        return torch.softmax(-lam * r, dim=0)

    lo, hi = -200.0, 200.0  # mean rank decreases as λ grows
    for _ in range(200):
        mid = (lo + hi) / 2
        if float((shares(mid) * r).sum()) * hi_r > target_mean_rank:
            lo = mid
        else:
            hi = mid
    return shares((lo + hi) / 2).tolist()


def quantile_thresholds(scores: torch.Tensor, cumulative: Sequence[float]) -> list[float]:
    """Score thresholds at the given cumulative shares (len(ranks) - 1 of them)."""
    scores = scores[torch.isfinite(scores)].double()
    if scores.numel() == 0:
        raise ConfigError("cannot calibrate on an empty (or all-NaN) set of scores")
    q = torch.tensor([min(max(c, 0.0), 1.0) for c in cumulative], dtype=torch.float64)
    return torch.quantile(scores, q).tolist()


def rank_labels(
    difficulty: torch.Tensor,
    ranks: Sequence[int],
    target_mean_rank: float | None = None,
    quantiles: Sequence[float] | None = None,
) -> torch.Tensor:
    """Turn a per-example difficulty [N] (e.g. the base model's WER) into rank labels [N]:
    harder examples get higher ranks, in shares set by a target mean rank or quantiles."""
    thresholds = thresholds_for(difficulty, ranks, target_mean_rank, quantiles)
    idx = torch.bucketize(difficulty.double(), torch.tensor(thresholds, dtype=torch.float64), right=True)
    return torch.tensor(ranks, dtype=torch.long)[idx.clamp(max=len(ranks) - 1)]


def thresholds_for(
    scores: torch.Tensor,
    ranks: Sequence[int],
    target_mean_rank: float | None,
    quantiles: Sequence[float] | None,
) -> list[float]:
    """The ``len(ranks) - 1`` thresholds on ``scores`` [N] that cut them into the shares of
    ``target_mean_rank`` or at the cumulative ``quantiles`` (exactly one of the two)."""
    if (target_mean_rank is None) == (quantiles is None):
        raise ConfigError("calibrate with exactly one of target_mean_rank or quantiles")
    if quantiles is not None:
        if len(quantiles) != len(ranks) - 1:
            raise ConfigError(f"need {len(ranks) - 1} quantiles for {len(ranks)} ranks, got {len(quantiles)}")
        cumulative = list(quantiles)
    else:
        shares = mean_rank_proportions(ranks, float(target_mean_rank))
        cumulative = [sum(shares[: i + 1]) for i in range(len(ranks) - 1)]
    return quantile_thresholds(scores, cumulative)
