"""Routers: map a batch of complexity signals to one rank per example.

Signals are a mapping ``name -> tensor [batch]`` of floats (e.g. ``duration``,
``snr_db``, ``proxy``); every router returns a LongTensor ``[batch]`` of ranks from its
``ranks``. The same router object is used in training and at inference, so an example is
trained at the rank it will be served at. No transformers import here on purpose: routers
are cheap and must load anywhere.

Every router is a ``Router``: it declares its ``ranks`` and the ``signal_names`` it reads,
and round-trips through ``to_dict`` / ``Router.from_dict`` (the form saved as an
adapter's ``router.json``).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from flexispeech.errors import ConfigError
from flexispeech.lora.calibration import thresholds_for

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
    """Stack the named signals into [batch, n_columns] float32; names the missing ones.

    A scalar signal ([batch]) is one column, a vector signal ([batch, d], e.g. the pooled
    encoder ``embedding``) is ``d`` columns, in the order of ``features``."""
    missing = [f for f in features if f not in signals]
    if missing:
        raise ConfigError(f"router needs signals {missing}; the batch has {sorted(signals)}")
    columns = [torch.as_tensor(signals[f], dtype=torch.float32) for f in features]
    return torch.cat([c.reshape(c.shape[0], -1) for c in columns], dim=1)


def feature_widths(signals: Signals, features: Sequence[str]) -> list[int]:
    """Columns per feature in ``feature_matrix`` (1 for a scalar signal, d for [batch, d])."""
    feature_matrix(signals, features)  # names any missing signal
    return [int(torch.as_tensor(signals[f])[0].numel()) for f in features]


def _check_ranks(ranks: Sequence[int]) -> tuple[int, ...]:
    ranks = tuple(int(r) for r in ranks)
    if not ranks or list(ranks) != sorted(set(ranks)) or ranks[0] < 0:
        raise ConfigError(f"router ranks must be sorted, distinct and >= 0, got {list(ranks)}")
    return ranks


class Router(ABC):
    """What every router has: ``ranks`` it routes to, the ``signal_names`` it reads, a call
    ``signals -> ranks [batch]``, and a dict form (``to_dict`` / ``Router.from_dict``).

    A subclass sets ``kind`` (the ``"type"`` of its dict form, which registers it) and
    keeps its constructor's arguments as the other keys of ``to_dict``.
    """

    kind: ClassVar[str]
    ranks: tuple[int, ...]
    """The ranks this router returns, sorted ascending."""
    _kinds: ClassVar[dict[str, type[Router]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        kind = cls.__dict__.get("kind")
        if kind is not None:
            Router._kinds[kind] = cls

    @property
    @abstractmethod
    def signal_names(self) -> tuple[str, ...]:
        """The signals this router reads (empty: it routes without looking at the input)."""

    @abstractmethod
    def __call__(self, signals: Signals) -> torch.Tensor:
        """Ranks [batch] int64 (values from ``ranks``) for signals ``name -> [batch]``."""

    @abstractmethod
    def describe(self) -> str:
        """One line for logs and reports, e.g. ``FixedRouter(rank=8)``."""

    @abstractmethod
    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable form: ``{"type": kind, ...}``; ``Router.from_dict`` inverts it."""

    def neutral_value(self, name: str) -> float:
        """The value of signal ``name`` that tells this router nothing about an example (the
        mean it standardises that signal by, so its z-score is 0; 0.0 without one): what
        to give for a signal that is not computed, e.g. the proxy in streaming."""
        return 0.0

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Router:
        """Rebuild a router from its ``to_dict()`` form (an adapter's ``router.json``)."""
        fields = dict(data)
        kind = fields.pop("type", None)
        router_cls = Router._kinds.get(kind)  # type: ignore[arg-type]
        if router_cls is None:
            raise ConfigError(f"unknown router type {kind!r}; expected one of {sorted(Router._kinds)}")
        if not issubclass(router_cls, cls):
            raise ConfigError(f"a {kind!r} router is not a {cls.__name__}")
        try:
            return router_cls._from_fields(fields)
        except TypeError as err:  # an unknown or missing key
            raise ConfigError(f"{kind} router: {err}") from None

    @classmethod
    def _from_fields(cls, fields: dict[str, Any]) -> Router:
        """The router of a ``to_dict`` form without its ``type`` (constructor keywords)."""
        return cls(**fields)


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

    def __call__(self, signals: Signals) -> torch.Tensor:
        return torch.full((batch_size(signals),), self.rank, dtype=torch.long)

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
        self.ranks = _check_ranks(ranks)
        probs = [1.0] * len(self.ranks) if probs is None else [float(p) for p in probs]
        if len(probs) != len(self.ranks) or min(probs) < 0 or sum(probs) <= 0:
            raise ConfigError(f"probs must be {len(self.ranks)} non-negative weights, got {probs}")
        self.probs = [p / sum(probs) for p in probs]
        self.seed = int(seed)
        self.generator = torch.Generator().manual_seed(self.seed)

    @property
    def signal_names(self) -> tuple[str, ...]:
        return ()

    def __call__(self, signals: Signals) -> torch.Tensor:
        idx = torch.multinomial(
            torch.tensor(self.probs), batch_size(signals), replacement=True, generator=self.generator
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
        self.ranks = _check_ranks(ranks)
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

    def __call__(self, signals: Signals) -> torch.Tensor:
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


class LearnedRouter(nn.Module, Router):
    """A small MLP over standardised signal features, trained with cross-entropy on
    difficulty labels (ranks), then frozen: the argmax class is the rank.

    Forward: signals [batch] each -> logits [batch, len(ranks)]; call it for ranks.
    """

    kind = "learned"

    def __init__(
        self,
        ranks: Sequence[int],
        features: Sequence[str],
        hidden: int = 32,
        widths: Sequence[int] | None = None,
        rank_penalty: float = 0.0,
    ) -> None:
        super().__init__()
        self.ranks = _check_ranks(ranks)
        self.features = list(features)
        if not self.features:
            raise ConfigError("LearnedRouter needs at least one feature name")
        self.hidden = int(hidden)
        self.widths = [1] * len(self.features) if widths is None else [int(w) for w in widths]
        if len(self.widths) != len(self.features) or min(self.widths) < 1:
            raise ConfigError(
                f"LearnedRouter widths {self.widths}: one positive width per feature {self.features}"
            )
        self.rank_penalty = float(rank_penalty)
        """Subtracted from the logits as ``rank_penalty * rank / r_max`` before the argmax: 0
        serves the predicted class; ``calibrate_mean_rank`` sets it for a target mean rank."""
        n_in = sum(self.widths)
        self.register_buffer("mean", torch.zeros(n_in))
        self.register_buffer("std", torch.ones(n_in))
        self.net = nn.Sequential(
            nn.Linear(n_in, self.hidden), nn.GELU(), nn.Linear(self.hidden, len(self.ranks))
        )

    @property
    def signal_names(self) -> tuple[str, ...]:
        return tuple(self.features)

    def neutral_value(self, name: str) -> float:
        if name not in self.features:
            return 0.0
        start = sum(self.widths[: self.features.index(name)])  # a vector signal: its first column's mean
        return float(self.mean[start])

    def logits(self, signals: Signals) -> torch.Tensor:
        """[batch, len(ranks)] logits (without the rank penalty)."""
        x = feature_matrix(signals, self.features).to(self.mean.device)
        if x.shape[1] != self.mean.shape[0]:
            raise ConfigError(
                f"router features {self.features} give {x.shape[1]} columns, the router reads {self.mean.shape[0]}"
            )
        z = torch.nan_to_num((x - self.mean) / self.std, nan=0.0)
        return self.net(z)

    def forward(self, signals: Signals) -> torch.Tensor:
        return self.logits(signals)

    def _pick(self, logits: torch.Tensor, penalty: float) -> torch.Tensor:
        """Rank indices [batch] of the argmax of ``logits - penalty * rank / r_max``."""
        r = torch.tensor(self.ranks, dtype=logits.dtype, device=logits.device) / max(max(self.ranks), 1)
        return (logits - penalty * r).argmax(dim=-1).cpu()

    def __call__(self, signals: Signals) -> torch.Tensor:  # type: ignore[override]
        with torch.no_grad():
            idx = self._pick(self.logits(signals), self.rank_penalty)
        return torch.tensor(self.ranks, dtype=torch.long)[idx]

    def calibrate_mean_rank(self, signals: Signals, target_mean_rank: float) -> float:
        """Set ``rank_penalty`` so that the mean rank on ``signals`` comes as close to
        ``target_mean_rank`` as the argmax allows without exceeding it; returns that mean.

        Each example's rank falls as the penalty grows (its argmax moves to lower ranks
        only), so the mean rank is monotone in the penalty and bisection finds it.
        """
        if not min(self.ranks) <= target_mean_rank <= max(self.ranks):
            raise ConfigError(
                f"target mean rank {target_mean_rank} is outside [{min(self.ranks)}, {max(self.ranks)}]"
            )
        ranks = torch.tensor(self.ranks, dtype=torch.float64)
        with torch.no_grad():
            logits = self.logits(signals).double()
        # Past this penalty the rank term alone decides every argmax: it separates two ranks
        # by at least bound * (smallest rank gap) / r_max, more than any two logits differ.
        gap = min((b - a for a, b in zip(self.ranks, self.ranks[1:])), default=1) / max(max(self.ranks), 1)
        bound = (2.0 * float(logits.abs().max()) + 1.0) / gap

        def mean_rank(penalty: float) -> float:
            return float(ranks[self._pick(logits, penalty)].mean())

        lo, hi = -bound, bound  # mean_rank(lo) is the largest reachable, mean_rank(hi) the smallest
        if mean_rank(lo) <= target_mean_rank:
            hi = lo
        for _ in range(100):
            mid = (lo + hi) / 2
            if mean_rank(mid) > target_mean_rank:
                lo = mid
            else:
                hi = mid
        self.rank_penalty = hi
        return mean_rank(hi)

    def fit(
        self,
        signals: Signals,
        labels: torch.Tensor | None = None,
        epochs: int = 300,
        lr: float = 1e-2,
        label_noise: float = 0.0,
        seed: int = 0,
        costs: torch.Tensor | None = None,
    ) -> list[float]:
        """Train on ``labels`` [N] (rank values from ``ranks``; cross-entropy) or on
        ``costs`` [N, len(ranks)] (the cost of serving each example at each rank, e.g. its
        word errors: the expected cost under the router's softmax is minimised, so the
        argmax moves to the rank with the lowest expected cost, not to the commonest
        label), full batch with Adam.

        ``label_noise`` replaces that share of labels with a random rank each epoch (a
        regulariser against over-trusting noisy difficulty labels). Returns the loss per
        epoch. The router is left in eval mode with gradients off: it is frozen.
        """
        if (labels is None) == (costs is None):
            raise ConfigError("LearnedRouter.fit: give labels or costs, not both")
        target = self._targets(labels, costs)
        x = feature_matrix(signals, self.features)
        if x.shape[1] != self.mean.shape[0]:
            raise ConfigError(
                f"router features {self.features} give {x.shape[1]} columns; widths {self.widths} say {self.mean.shape[0]}"
            )
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
            logits = self.logits(signals)
            if target.dim() == 2:  # costs: the expected cost under the softmax
                loss = (torch.softmax(logits, dim=-1) * target).sum(-1).mean()
            else:
                y = target
                if label_noise > 0:
                    flip = torch.rand(len(y), generator=gen) < label_noise
                    y = torch.where(flip, torch.randint(len(self.ranks), y.shape, generator=gen), y)
                loss = nn.functional.cross_entropy(logits, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        self.eval()
        self.requires_grad_(False)
        return losses

    def _targets(self, labels: torch.Tensor | None, costs: torch.Tensor | None) -> torch.Tensor:
        """Class indices [N] of ``labels``, or ``costs`` [N, R] scaled to a mean of 1 (the
        loss's scale, hence Adam's step, does not depend on the units of the costs)."""
        if costs is not None:
            costs = torch.as_tensor(costs, dtype=torch.float32)
            if costs.dim() != 2 or costs.shape[1] != len(self.ranks) or not torch.isfinite(costs).all():
                raise ConfigError(f"costs must be finite, [N, {len(self.ranks)}], got {list(costs.shape)}")
            return costs / costs.abs().mean().clamp(min=1e-8)
        labels = torch.as_tensor(labels, dtype=torch.long)
        rank_index = {r: i for i, r in enumerate(self.ranks)}
        unknown = sorted({int(v) for v in labels.tolist()} - set(rank_index))
        if unknown:
            raise ConfigError(f"labels {unknown} are not router ranks {list(self.ranks)}")
        return torch.tensor([rank_index[int(v)] for v in labels.tolist()], dtype=torch.long)

    def describe(self) -> str:
        penalty = f", rank_penalty={self.rank_penalty:.3g}" if self.rank_penalty else ""
        return f"LearnedRouter(ranks={list(self.ranks)}, features={self.features}, hidden={self.hidden}{penalty})"

    def to_dict(self) -> dict[str, Any]:
        state = {k: v.tolist() for k, v in self.state_dict().items()}
        return {
            "type": self.kind,
            "ranks": list(self.ranks),
            "features": self.features,
            "hidden": self.hidden,
            "widths": self.widths,
            "rank_penalty": self.rank_penalty,
            "state": state,
        }

    @classmethod
    def _from_fields(cls, fields: dict[str, Any]) -> LearnedRouter:
        fields = dict(fields)
        state = fields.pop("state")
        router = cls(**fields)
        router.load_state_dict({k: torch.tensor(v) for k, v in state.items()})
        router.eval()
        router.requires_grad_(False)  # a saved router is a fitted, frozen one
        return router
