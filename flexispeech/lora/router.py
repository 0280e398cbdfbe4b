"""Routers: map a batch of complexity signals to one rank per example.

Signals are a mapping ``name -> tensor [batch]`` of floats (e.g. ``duration``,
``snr_db``, ``proxy``); every router returns a LongTensor ``[batch]`` of ranks from its
``ranks``. The same router object is used in training and at inference, so an example is
trained at the rank it will be served at. No transformers import here on purpose: routers
are cheap and must load anywhere.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from flexispeech.errors import ConfigError

Signals = Mapping[str, torch.Tensor]


def batch_size(signals: Signals) -> int:
    """The number of examples in a batch of signals (all entries must agree)."""
    sizes = {name: int(torch.as_tensor(v).shape[0]) for name, v in signals.items()}
    if not sizes:
        raise ConfigError("signals are empty: a router needs at least one signal per example")
    if len(set(sizes.values())) != 1:
        raise ConfigError(f"signals disagree on the batch size: {sizes}")
    return next(iter(sizes.values()))


def feature_matrix(signals: Signals, features: Sequence[str]) -> torch.Tensor:
    """Stack the named signals into [batch, len(features)] float32; names the missing ones."""
    missing = [f for f in features if f not in signals]
    if missing:
        raise ConfigError(f"router needs signals {missing}; the batch has {sorted(signals)}")
    return torch.stack([torch.as_tensor(signals[f], dtype=torch.float32).reshape(-1) for f in features], dim=1)


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
    thresholds = _thresholds_for(difficulty, ranks, target_mean_rank, quantiles)
    idx = torch.bucketize(difficulty.double(), torch.tensor(thresholds, dtype=torch.float64), right=True)
    return torch.tensor(ranks, dtype=torch.long)[idx.clamp(max=len(ranks) - 1)]


def _thresholds_for(
    scores: torch.Tensor, ranks: Sequence[int], target_mean_rank: float | None, quantiles: Sequence[float] | None
) -> list[float]:
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


def _check_ranks(ranks: Sequence[int]) -> tuple[int, ...]:
    ranks = tuple(int(r) for r in ranks)
    if not ranks or list(ranks) != sorted(set(ranks)) or ranks[0] < 0:
        raise ConfigError(f"router ranks must be sorted, distinct and >= 0, got {list(ranks)}")
    return ranks


class FixedRouter:
    """Every example at one rank: static LoRA."""

    kind = "fixed"

    def __init__(self, rank: int) -> None:
        self.rank = int(rank)
        self.ranks = (self.rank,)

    def __call__(self, signals: Signals) -> torch.Tensor:
        return torch.full((batch_size(signals),), self.rank, dtype=torch.long)

    def describe(self) -> str:
        return f"FixedRouter(rank={self.rank})"

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.kind, "rank": self.rank}


class RandomRouter:
    """Ranks sampled independently per example (nested/DyLoRA-style training).

    ``probs`` (default uniform) weights the ranks; ``seed`` makes the draws repeatable.
    """

    kind = "random"

    def __init__(self, ranks: Sequence[int], probs: Sequence[float] | None = None, seed: int = 0) -> None:
        self.ranks = _check_ranks(ranks)
        probs = [1.0] * len(self.ranks) if probs is None else [float(p) for p in probs]
        if len(probs) != len(self.ranks) or min(probs) < 0 or sum(probs) <= 0:
            raise ConfigError(f"probs must be {len(self.ranks)} non-negative weights, got {probs}")
        self.probs = [p / sum(probs) for p in probs]
        self.seed = int(seed)
        self.generator = torch.Generator().manual_seed(self.seed)

    def __call__(self, signals: Signals) -> torch.Tensor:
        idx = torch.multinomial(torch.tensor(self.probs), batch_size(signals), replacement=True, generator=self.generator)
        return torch.tensor(self.ranks, dtype=torch.long)[idx]

    def describe(self) -> str:
        return f"RandomRouter(ranks={list(self.ranks)}, probs={[round(p, 3) for p in self.probs]})"

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.kind, "ranks": list(self.ranks), "probs": self.probs, "seed": self.seed}


class ThresholdRouter:
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
        self.ranks = _check_ranks(ranks)
        self.weights = dict(weights or {"score": 1.0})
        self.means = {k: float((means or {}).get(k, 0.0)) for k in self.weights}
        self.stds = {k: float((stds or {}).get(k, 1.0)) for k in self.weights}
        if thresholds is None:
            thresholds = [float(i) for i in range(len(self.ranks) - 1)]
        if len(thresholds) != len(self.ranks) - 1 or list(thresholds) != sorted(thresholds):
            raise ConfigError(f"need {len(self.ranks) - 1} ascending thresholds, got {list(thresholds)}")
        self.thresholds = [float(t) for t in thresholds]

    def score(self, signals: Signals) -> torch.Tensor:
        """The complexity score, [batch] float64."""
        names = list(self.weights)
        x = feature_matrix(signals, names).double()
        mean = torch.tensor([self.means[k] for k in names], dtype=torch.float64)
        std = torch.tensor([self.stds[k] for k in names], dtype=torch.float64)
        z = torch.nan_to_num((x - mean) / std, nan=0.0)
        return z @ torch.tensor([self.weights[k] for k in names], dtype=torch.float64)

    def __call__(self, signals: Signals) -> torch.Tensor:
        idx = torch.bucketize(self.score(signals), torch.tensor(self.thresholds, dtype=torch.float64), right=True)
        return torch.tensor(self.ranks, dtype=torch.long)[idx]

    def calibrate(
        self, signals: Signals, target_mean_rank: float | None = None, quantiles: Sequence[float] | None = None
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
        self.thresholds = _thresholds_for(self.score(signals), self.ranks, target_mean_rank, quantiles)
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


class LearnedRouter(nn.Module):
    """A small MLP over standardised signal features, trained with cross-entropy on
    difficulty labels (ranks), then frozen: the argmax class is the rank.

    Forward: signals [batch] each -> logits [batch, len(ranks)]; call it for ranks.
    """

    kind = "learned"

    def __init__(self, ranks: Sequence[int], features: Sequence[str], hidden: int = 32) -> None:
        super().__init__()
        self.ranks = _check_ranks(ranks)
        self.features = list(features)
        if not self.features:
            raise ConfigError("LearnedRouter needs at least one feature name")
        self.hidden = int(hidden)
        n_in = len(self.features)
        self.register_buffer("mean", torch.zeros(n_in))
        self.register_buffer("std", torch.ones(n_in))
        self.net = nn.Sequential(nn.Linear(n_in, self.hidden), nn.GELU(), nn.Linear(self.hidden, len(self.ranks)))

    def logits(self, signals: Signals) -> torch.Tensor:
        """[batch, len(ranks)] logits."""
        x = feature_matrix(signals, self.features).to(self.mean.device)
        z = torch.nan_to_num((x - self.mean) / self.std, nan=0.0)
        return self.net(z)

    def forward(self, signals: Signals) -> torch.Tensor:
        return self.logits(signals)

    def __call__(self, signals: Signals) -> torch.Tensor:  # type: ignore[override]
        with torch.no_grad():
            idx = self.logits(signals).argmax(dim=-1).cpu()
        return torch.tensor(self.ranks, dtype=torch.long)[idx]

    def fit(
        self,
        signals: Signals,
        labels: torch.Tensor,
        epochs: int = 300,
        lr: float = 1e-2,
        label_noise: float = 0.0,
        seed: int = 0,
    ) -> list[float]:
        """Train on ``labels`` [N] (rank values from ``ranks``), full batch with Adam.

        ``label_noise`` replaces that share of labels with a random rank each epoch (a
        regulariser against over-trusting noisy difficulty labels). Returns the loss per
        epoch. The router is left in eval mode with gradients off: it is frozen.
        """
        labels = torch.as_tensor(labels, dtype=torch.long)
        rank_index = {r: i for i, r in enumerate(self.ranks)}
        unknown = sorted({int(v) for v in labels.tolist()} - set(rank_index))
        if unknown:
            raise ConfigError(f"labels {unknown} are not router ranks {list(self.ranks)}")
        target = torch.tensor([rank_index[int(v)] for v in labels.tolist()], dtype=torch.long)
        x = feature_matrix(signals, self.features)
        finite = torch.where(torch.isfinite(x), x, torch.nan)
        self.mean.copy_(torch.nan_to_num(finite.nanmean(dim=0), nan=0.0))
        std = torch.sqrt(torch.nan_to_num(((finite - self.mean) ** 2).nanmean(dim=0), nan=1.0))
        self.std.copy_(torch.where(std > 1e-8, std, torch.ones_like(std)))
        gen = torch.Generator().manual_seed(seed)
        for p in self.net.parameters():  # seeded init: same labels, same router
            if p.dim() > 1:
                nn.init.kaiming_uniform_(p, a=math.sqrt(5), generator=gen)
            else:
                nn.init.zeros_(p)
            p.requires_grad_(True)
        opt = torch.optim.Adam(self.net.parameters(), lr=lr)
        self.train()
        losses = []
        for _ in range(epochs):
            y = target
            if label_noise > 0:
                flip = torch.rand(len(y), generator=gen) < label_noise
                y = torch.where(flip, torch.randint(len(self.ranks), y.shape, generator=gen), y)
            loss = nn.functional.cross_entropy(self.logits(signals), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        self.eval()
        self.requires_grad_(False)
        return losses

    def describe(self) -> str:
        return f"LearnedRouter(ranks={list(self.ranks)}, features={self.features}, hidden={self.hidden})"

    def to_dict(self) -> dict[str, Any]:
        state = {k: v.tolist() for k, v in self.state_dict().items()}
        return {"type": self.kind, "ranks": list(self.ranks), "features": self.features, "hidden": self.hidden, "state": state}


Router = FixedRouter | RandomRouter | ThresholdRouter | LearnedRouter


def router_from_dict(data: Mapping[str, Any]) -> Router:
    """Rebuild a router from its ``to_dict()`` form."""
    data = dict(data)
    kind = data.pop("type", None)
    if kind == "fixed":
        return FixedRouter(**data)
    if kind == "random":
        return RandomRouter(**data)
    if kind == "threshold":
        return ThresholdRouter(**data)
    if kind == "learned":
        state = data.pop("state")
        router = LearnedRouter(**data)
        router.load_state_dict({k: torch.tensor(v) for k, v in state.items()})
        router.eval()
        router.requires_grad_(False)
        return router
    raise ConfigError(f"unknown router type {kind!r}; expected fixed, random, threshold or learned")
