"""Routers: map a batch of complexity signals to one rank per example.

Signals are a mapping ``name -> tensor [batch]`` of floats (e.g. ``duration``,
``snr_db``, ``proxy``); every router returns a LongTensor ``[batch]`` of ranks from its
``ranks``. The same router object is used in training and at inference, so an example is
trained at the rank it will be served at. No transformers import here on purpose: routers
are cheap and must load anywhere.

Every router is a ``Router`` (``lora.router_base``): it declares its ``ranks`` and the
``signal_names`` it reads, and round-trips through ``to_dict`` / ``Router.from_dict`` (the
form saved as an adapter's ``router.json``). This module holds the fixed, random and
threshold routers and re-exports the learned one (``lora.learned_router``), the gated one
(``lora.gate``) and the base,
so importing it registers every built-in kind.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from flexispeech.errors import ConfigError
from flexispeech.lora.calibration import thresholds_for
from flexispeech.lora.gate import GatedRouter
from flexispeech.lora.learned_router import LearnedRouter
from flexispeech.lora.router_base import (
    Router,
    Signals,
    batch_size,
    feature_matrix,
    feature_widths,
    validate_ranks,
)

__all__ = [
    "FixedRouter",
    "GatedRouter",
    "LearnedRouter",
    "RandomRouter",
    "Router",
    "Signals",
    "ThresholdRouter",
    "batch_size",
    "feature_matrix",
    "feature_widths",
    "router_from_dict",
]


def router_from_dict(data: Mapping[str, Any]) -> Router:
    """Rebuild a router from its ``to_dict()`` form (``Router.from_dict``)."""
    return Router.from_dict(data)


class FixedRouter(Router):
    """Every example at one rank: static LoRA."""

    kind = "fixed"

    def __init__(self, rank: int) -> None:
        self.rank = int(rank)
        self.ranks = (self.rank,)

    @property
    def signal_names(self) -> tuple[str, ...]:
        return ()

    def __call__(self, signals: Signals, n: int | None = None) -> torch.Tensor:
        return torch.full((batch_size(signals, n),), self.rank, dtype=torch.long)

    def describe(self) -> str:
        return f"FixedRouter(rank={self.rank})"

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.kind, "rank": self.rank}


class RandomRouter(Router):
    """Ranks sampled independently per example (nested/DyLoRA-style training).

    ``probs`` (default uniform) weights the ranks; ``seed`` makes the draws repeatable.
    """

    kind = "random"

    def __init__(self, ranks: Sequence[int], probs: Sequence[float] | None = None, seed: int = 0) -> None:
        self.ranks = validate_ranks(ranks)
        probs = [1.0] * len(self.ranks) if probs is None else [float(p) for p in probs]
        if len(probs) != len(self.ranks) or min(probs) < 0 or sum(probs) <= 0:
            raise ConfigError(f"probs must be {len(self.ranks)} non-negative weights, got {probs}")
        self.probs = [p / sum(probs) for p in probs]
        self.seed = int(seed)
        self.generator = torch.Generator().manual_seed(self.seed)

    @property
    def signal_names(self) -> tuple[str, ...]:
        return ()

    def __call__(self, signals: Signals, n: int | None = None) -> torch.Tensor:
        idx = torch.multinomial(
            torch.tensor(self.probs), batch_size(signals, n), replacement=True, generator=self.generator
        )
        return torch.tensor(self.ranks, dtype=torch.long)[idx]

    def describe(self) -> str:
        return f"RandomRouter(ranks={list(self.ranks)}, probs={[round(p, 3) for p in self.probs]})"

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.kind, "ranks": list(self.ranks), "probs": self.probs, "seed": self.seed}


class ThresholdRouter(Router):
    """A scalar complexity score, cut by thresholds into ranks.

    ``score = Σ_k weights[k] · (signal_k − mean_k) / std_k`` (higher = harder; give SNR a
    negative weight). Example ``n`` gets ``ranks[i]`` where ``i`` counts the thresholds at
    or below its score. A NaN signal counts as its mean. ``calibrate`` sets the
    standardisation and the thresholds from sample signals.
    """

    kind = "threshold"

    def __init__(
        self,
        ranks: Sequence[int],
        weights: Mapping[str, float] | None = None,
        thresholds: Sequence[float] | None = None,
        means: Mapping[str, float] | None = None,
        stds: Mapping[str, float] | None = None,
    ) -> None:
        self.ranks = validate_ranks(ranks)
        self.weights = dict(weights or {"score": 1.0})
        self.means = {k: float((means or {}).get(k, 0.0)) for k in self.weights}
        self.stds = {k: float((stds or {}).get(k, 1.0)) for k in self.weights}
        if thresholds is None:
            thresholds = [float(i) for i in range(len(self.ranks) - 1)]
        if len(thresholds) != len(self.ranks) - 1 or list(thresholds) != sorted(thresholds):
            raise ConfigError(f"need {len(self.ranks) - 1} ascending thresholds, got {list(thresholds)}")
        self.thresholds = [float(t) for t in thresholds]

    @property
    def signal_names(self) -> tuple[str, ...]:
        return tuple(self.weights)

    def neutral_value(self, name: str) -> float:
        return self.means.get(name, 0.0)

    def score(self, signals: Signals) -> torch.Tensor:
        """The complexity score, [batch] float64."""
        names = list(self.weights)
        x = feature_matrix(signals, names).double()
        mean = torch.tensor([self.means[k] for k in names], dtype=torch.float64)
        std = torch.tensor([self.stds[k] for k in names], dtype=torch.float64)
        z = torch.nan_to_num((x - mean) / std, nan=0.0)
        return z @ torch.tensor([self.weights[k] for k in names], dtype=torch.float64)

    def __call__(self, signals: Signals, n: int | None = None) -> torch.Tensor:
        batch_size(signals, n)  # signals and n must agree
        idx = torch.bucketize(
            self.score(signals), torch.tensor(self.thresholds, dtype=torch.float64), right=True
        )
        return torch.tensor(self.ranks, dtype=torch.long)[idx]

    def calibrate(
        self,
        signals: Signals,
        target_mean_rank: float | None = None,
        quantiles: Sequence[float] | None = None,
    ) -> ThresholdRouter:
        """Fit the standardisation and thresholds on sample ``signals``, either to a
        ``target_mean_rank`` (shares per rank from ``mean_rank_proportions``) or at the
        given cumulative ``quantiles`` (one per threshold). Returns ``self``."""
        x = feature_matrix(signals, list(self.weights)).double()
        for i, k in enumerate(self.weights):
            col = x[:, i][torch.isfinite(x[:, i])]
            self.means[k] = float(col.mean()) if col.numel() else 0.0
            std = float(col.std()) if col.numel() > 1 else 1.0
            self.stds[k] = std if std > 1e-12 else 1.0
        self.thresholds = thresholds_for(self.score(signals), self.ranks, target_mean_rank, quantiles)
        return self

    def describe(self) -> str:
        terms = " + ".join(f"{w:g}*z({k})" for k, w in self.weights.items())
        return f"ThresholdRouter(ranks={list(self.ranks)}, score={terms}, thresholds={[round(t, 3) for t in self.thresholds]})"

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.kind,
            "ranks": list(self.ranks),
            "weights": self.weights,
            "thresholds": self.thresholds,
            "means": self.means,
            "stds": self.stds,
        }
