"""The learned router: a small MLP over standardised signal features, fit to rank labels
(difficulty, or benefit) or to the cost of each rank (measured word errors), then frozen."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from flexispeech.errors import ConfigError
from flexispeech.lora.router_base import Router, Signals, batch_size, feature_matrix, validate_ranks


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
        self.ranks = validate_ranks(ranks)
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

    def __call__(self, signals: Signals, n: int | None = None) -> torch.Tensor:  # type: ignore[override]
        batch_size(signals, n)  # signals and n must agree
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
        word errors), full batch with Adam.

        With costs the logits regress each rank's negated cost (smooth L1, costs scaled to
        a mean of 1): the argmax is the rank with the lowest predicted cost, and the rank
        penalty of ``calibrate_mean_rank`` is in the same units, so capping the mean rank
        serves ``argmin predicted cost + penalty * rank / r_max`` (a Lagrangian trade of
        errors for rank). The first fit minimised the expected cost under the softmax
        instead; its logit gaps stop growing once one rank dominates, so they say little
        about how many errors a lower rank costs, and in the GPU study the capped router
        sent a fifth of the validation split to rank 0 at twice the WER of rank 4.

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
            if target.dim() == 2:  # costs: the logits regress each rank's negated cost
                loss = nn.functional.smooth_l1_loss(logits, -target)
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
