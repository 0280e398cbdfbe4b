"""The novelty gate: rank 0 for inputs unlike anything the adapter was trained on.

An adapter trained on one domain can hurt another: in the GPU study every positive rank of
adapters trained on synthetic voices made real recordings worse than the base model, and a
router fit on in-domain data cannot know that, since it never saw such inputs. The gate
measures how far an input's pooled base-encoder embedding (``signals.embedding``) lies from
the training inputs' embeddings and serves anything farther than a held-out quantile at the
base model (rank 0, the safe default); everything else goes to the wrapped router.

The distance is the Mahalanobis distance under probabilistic PCA (Tipping & Bishop, 1999):
the covariance is modelled as its top ``k`` principal directions plus an isotropic rest,
which is well conditioned with a few thousand examples in d = 384-1280 dimensions and keeps
the saved gate small (k x d numbers, not d x d). Written in torch rather than taken from
scikit-learn: it is twenty lines, and routers must load with torch alone.

A second gate, ``ConfidenceGate``, serves rank 0 where the base model is already sure of
its transcript: its decoder entropy on its own first pass (the ``proxy_entropy`` signal)
lower than that of a held-out share of in-domain inputs. Real recordings that the base
model transcribes well are such inputs: in the GPU study their median entropy was half the
synthetic test split's, and adapters trained on synthetic voices made them worse.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from flexispeech.errors import ConfigError
from flexispeech.lora.router_base import Router, Signals, batch_size, validate_ranks

# The name of the pooled-encoder signal (signals.embedding.EMBEDDING), spelled here so that
# routers load without the signal code (which imports the model side).
EMBEDDING = "embedding"


class NoveltyGate:
    """A PPCA Mahalanobis distance from the training embeddings, and a threshold on it.

    ``score`` is the squared distance divided by d, so in-distribution inputs score about 1
    whatever the embedding width.
    """

    def __init__(
        self,
        mean: torch.Tensor,
        components: torch.Tensor,
        variances: torch.Tensor,
        residual_variance: float,
        threshold: float = math.inf,
        quantile: float | None = None,
    ) -> None:
        """
        Args:
            mean: [d] the training embeddings' mean.
            components: [k, d] orthonormal principal directions.
            variances: [k] the variance along each direction (> 0).
            residual_variance: the variance of every other direction (> 0).
            threshold: scores above it are novel (``set_threshold`` picks it).
            quantile: the held-out quantile the threshold was set at (for reports).
        """
        self.mean = torch.as_tensor(mean, dtype=torch.float64)
        self.components = torch.as_tensor(components, dtype=torch.float64).reshape(-1, self.mean.numel())
        self.variances = torch.as_tensor(variances, dtype=torch.float64)
        self.residual_variance = float(residual_variance)
        if self.variances.numel() != self.components.shape[0] or not (self.variances > 0).all():
            raise ConfigError("novelty gate: one positive variance per principal direction")
        if not self.residual_variance > 0:
            raise ConfigError("novelty gate: the residual variance must be positive")
        self.threshold = float(threshold)
        self.quantile = quantile

    @property
    def dim(self) -> int:
        return int(self.mean.numel())

    @classmethod
    def fit(cls, embeddings: torch.Tensor, components: int = 32) -> NoveltyGate:
        """Fit on ``embeddings`` [N, d] (rows with a NaN are left out)."""
        x = torch.as_tensor(embeddings, dtype=torch.float64)
        if x.dim() != 2:
            raise ConfigError(f"novelty gate: embeddings must be [N, d], got {list(x.shape)}")
        x = x[torch.isfinite(x).all(dim=1)]
        n, d = x.shape
        if n < 2 or d < 2:
            raise ConfigError(
                f"novelty gate: needs at least 2 embeddings of width >= 2, got {n} of width {d}"
            )
        k = max(1, min(int(components), n - 1, d - 1))
        mean = x.mean(dim=0)
        cov = (x - mean).T @ (x - mean) / (n - 1)
        eigvals, eigvecs = torch.linalg.eigh(cov)  # ascending
        eigvals = eigvals.flip(0).clamp(min=0.0)
        eigvecs = eigvecs.flip(1)
        floor = max(float(eigvals[0]) * 1e-9, 1e-12)  # keeps a degenerate direction finite
        rest = float(eigvals[k:].mean()) if k < d else floor
        return cls(mean, eigvecs[:, :k].T, eigvals[:k].clamp(min=floor), max(rest, floor))

    def score(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Squared PPCA Mahalanobis distance / d: [B, d] -> [B] float32 (NaN for a row with a NaN)."""
        x = torch.as_tensor(embeddings, dtype=torch.float64)
        if x.shape[-1] != self.dim:
            raise ConfigError(
                f"novelty gate: the embedding has {x.shape[-1]} values, the gate was fit on {self.dim} "
                "(embeddings of another base model?)"
            )
        x = x.reshape(-1, self.dim) - self.mean
        proj = x @ self.components.T  # [B, k]
        inside = (proj**2 / self.variances).sum(dim=1)
        rest = ((x**2).sum(dim=1) - (proj**2).sum(dim=1)).clamp(min=0.0) / self.residual_variance
        return ((inside + rest) / self.dim).float()

    def set_threshold(self, heldout: torch.Tensor, quantile: float) -> float:
        """Set the threshold at ``quantile`` of the scores of held-out embeddings [N, d]
        (inputs the gate was not fit on, so that share of in-domain inputs passes)."""
        if not 0.0 < quantile <= 1.0:
            raise ConfigError(f"novelty gate: quantile must be in (0, 1], got {quantile}")
        scores = self.score(heldout).double()
        scores = scores[torch.isfinite(scores)]
        if scores.numel() == 0:
            raise ConfigError("novelty gate: no held-out embeddings to set the threshold on")
        self.threshold = float(torch.quantile(scores, quantile))
        self.quantile = float(quantile)
        return self.threshold

    def novel(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Bool [B]: above the threshold, or without an embedding (NaN: nothing says it is in-domain)."""
        s = self.score(embeddings)
        return ~(s <= self.threshold)

    def to_dict(self) -> dict[str, Any]:
        return {
            "mean": self.mean.tolist(),
            "components": self.components.tolist(),
            "variances": self.variances.tolist(),
            "residual_variance": self.residual_variance,
            "threshold": self.threshold,
            "quantile": self.quantile,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> NoveltyGate:
        try:
            return cls(**dict(data))
        except TypeError as err:
            raise ConfigError(f"novelty gate: {err}") from None


class ConfidenceGate:
    """Rank 0 where a base-model confidence signal is below ``threshold`` (lower: surer).

    ``signal`` is ``proxy_entropy`` (mean entropy of the base model's next-token
    distributions over its own transcript, nats) or ``proxy`` (its mean negative
    log-probability); ``share`` is the held-out share of in-domain inputs the threshold
    sends to rank 0 (for reports)."""

    SIGNALS = ("proxy_entropy", "proxy")

    def __init__(self, signal: str, threshold: float, share: float | None = None) -> None:
        if signal not in self.SIGNALS:
            raise ConfigError(f"confidence gate: signal must be one of {list(self.SIGNALS)}, got {signal!r}")
        self.signal, self.threshold, self.share = signal, float(threshold), share

    @classmethod
    def at_share(cls, signal: str, heldout: torch.Tensor, share: float) -> ConfidenceGate:
        """The gate that sends ``share`` of the held-out values [N] of ``signal`` to rank 0."""
        if not 0.0 < share < 1.0:
            raise ConfigError(f"confidence gate: share must be in (0, 1), got {share}")
        values = torch.as_tensor(heldout, dtype=torch.float64).reshape(-1)
        values = values[torch.isfinite(values)]
        if values.numel() == 0:
            raise ConfigError(f"confidence gate: no held-out values of {signal!r} to set the threshold on")
        return cls(signal, float(torch.quantile(values, share)), share)

    def confident(self, signals: Signals) -> torch.Tensor:
        """Bool [B]: the base model is surer than the threshold (NaN: not known, not gated)."""
        if self.signal not in signals:
            raise ConfigError(
                f"the confidence gate needs the '{self.signal}' signal; the batch has {sorted(signals)}"
            )
        values = torch.as_tensor(signals[self.signal], dtype=torch.float64).reshape(-1)
        return values < self.threshold

    def to_dict(self) -> dict[str, Any]:
        return {"signal": self.signal, "threshold": self.threshold, "share": self.share}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ConfidenceGate:
        try:
            return cls(**dict(data))
        except TypeError as err:
            raise ConfigError(f"confidence gate: {err}") from None


class GatedRouter(Router):
    """A router behind a novelty gate and/or a confidence gate: inputs the novelty gate
    finds novel, or on which the base model is confident, get ``fallback_rank`` (0, the
    base model, by default); the others get the wrapped router's rank.

    Reads the wrapped router's signals, ``embedding`` (novelty gate) and the confidence
    gate's signal.
    """

    kind = "gated"

    def __init__(
        self,
        router: Router | Mapping[str, Any],
        gate: NoveltyGate | Mapping[str, Any] | None = None,
        fallback_rank: int = 0,
        confident: ConfidenceGate | Mapping[str, Any] | None = None,
    ) -> None:
        self.router = router if isinstance(router, Router) else Router.from_dict(router)
        if isinstance(self.router, GatedRouter):  # gating twice: the new gates replace the old
            self.router = self.router.router
        self.gate = gate if isinstance(gate, NoveltyGate) or gate is None else NoveltyGate.from_dict(gate)
        self.confident = (
            confident
            if isinstance(confident, ConfidenceGate) or confident is None
            else ConfidenceGate.from_dict(confident)
        )
        if self.gate is None and self.confident is None:
            raise ConfigError("gated router: needs a novelty gate, a confidence gate or both")
        self.fallback_rank = int(fallback_rank)
        self.ranks = validate_ranks(sorted({self.fallback_rank, *self.router.ranks}))

    @property
    def signal_names(self) -> tuple[str, ...]:
        names = list(self.router.signal_names)
        for extra in ([EMBEDDING] if self.gate else []) + ([self.confident.signal] if self.confident else []):
            if extra not in names:
                names.append(extra)
        return tuple(names)

    def neutral_value(self, name: str) -> float:
        return self.router.neutral_value(name)

    def __call__(self, signals: Signals, n: int | None = None) -> torch.Tensor:
        if self.gate is not None and EMBEDDING not in signals:
            raise ConfigError(
                f"the novelty gate needs the '{EMBEDDING}' signal; the batch has {sorted(signals)}"
            )
        n = batch_size(signals, n)
        # The wrapped router gets its own signals only (it names any that are missing).
        ranks = self.router({k: signals[k] for k in self.router.signal_names if k in signals}, n).clone()
        if self.gate is not None:
            novel = self.gate.novel(torch.as_tensor(signals[EMBEDDING]).reshape(n, -1))
            ranks[novel] = self.fallback_rank
        if self.confident is not None:
            ranks[self.confident.confident(signals)] = self.fallback_rank
        return ranks

    def describe(self) -> str:
        parts = [self.router.describe()]
        if self.gate is not None:
            q = f" q={self.gate.quantile:g}" if self.gate.quantile is not None else ""
            parts.append(f"novelty > {self.gate.threshold:.3g}{q}")
        if self.confident is not None:
            share = f" ({self.confident.share:g} of held-out)" if self.confident.share is not None else ""
            parts.append(f"{self.confident.signal} < {self.confident.threshold:.3g}{share}")
        return f"GatedRouter({', '.join(parts)} -> rank {self.fallback_rank})"

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.kind,
            "router": self.router.to_dict(),
            "gate": self.gate.to_dict() if self.gate is not None else None,
            "fallback_rank": self.fallback_rank,
            "confident": self.confident.to_dict() if self.confident is not None else None,
        }
