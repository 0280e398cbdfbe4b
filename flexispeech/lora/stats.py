"""Parameter accounting: the method's "fewer active parameters" axis."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from flexispeech.lora.inject import flexi_layers
from flexispeech.lora.ranks import RankError, check_ranks, get_state


@dataclass(frozen=True)
class AdapterParameters:
    """Adapter parameter counts of one model.

    ``total`` is every adapter parameter (rank r_max); ``per_rank[r]`` is what an example
    at rank r uses; ``active_mean`` is the mean over the given rank distribution (None
    when no distribution was given).
    """

    total: int
    per_rank: dict[int, int]
    active_mean: float | None = None


def count_parameters(
    model: nn.Module, ranks: Sequence[int] | torch.Tensor | Mapping[int, float] | None = None
) -> AdapterParameters:
    """Count adapter parameters; with ``ranks`` (per-example ranks, or ``{rank: weight}``)
    also the average active adapter parameters per example."""
    state = get_state(model)
    per_unit = sum(layer.in_features + layer.out_features for _, layer in flexi_layers(model))
    # rank 0 too: the base model, which every adapter may serve (check_ranks)
    per_rank = {r: r * per_unit for r in sorted({0, *state.config.ranks})}
    active = None
    if ranks is not None:
        weights = _rank_weights(ranks)
        check_ranks(state.config, list(weights))
        total_w = sum(weights.values())
        if total_w <= 0:
            raise RankError("count_parameters: the rank distribution is empty")
        active = sum(per_rank[r] * w for r, w in weights.items()) / total_w
    return AdapterParameters(total=state.config.r_max * per_unit, per_rank=per_rank, active_mean=active)


def _rank_weights(ranks: Sequence[int] | torch.Tensor | Mapping[int, float]) -> dict[int, float]:
    """``{rank: weight}`` of per-example ranks or of a distribution; a rank that is not a
    whole number, or a weight that is negative or not finite, is a ``RankError`` (``int()``
    would truncate 4.7 to 4, and a negative weight gives a negative mean)."""
    if isinstance(ranks, Mapping):
        pairs = list(ranks.items())
    else:
        try:
            values = torch.as_tensor(ranks).reshape(-1).tolist()
        except (TypeError, ValueError, RuntimeError):
            raise RankError(f"count_parameters: ranks must be whole numbers, got {ranks!r}") from None
        pairs = [(v, 1.0) for v in values]
    weights: Counter[int] = Counter()
    for r, w in pairs:
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not math.isfinite(r) or r != int(r):
            raise RankError(f"count_parameters: ranks must be whole numbers, got {r!r}")
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not 0 <= w < math.inf:
            raise RankError(f"count_parameters: weight {w!r} of rank {r}: must be a finite number >= 0")
        weights[int(r)] += float(w)
    return dict(weights)
