"""Build the training and inference routers of a run from its RoutingConfig.

Consistent modes (fixed, threshold, learned) use one router object for both, so every
example is trained at the rank it is served at. ``random`` and ``inconsistent`` sample
ranks in training; they differ in what serves at inference.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from flexispeech.errors import ConfigError
from flexispeech.lora.calibration import rank_labels
from flexispeech.lora.router import (
    FixedRouter,
    LearnedRouter,
    RandomRouter,
    Router,
    ThresholdRouter,
    feature_widths,
)
from flexispeech.training.config import RoutingConfig

MODES = ("fixed", "random", "threshold", "learned", "inconsistent")


def difficulty_scores(
    difficulty: Sequence[float | None], tie_break: Sequence[float] | None = None
) -> torch.Tensor:
    """Per-example difficulty as a rank in [0, 1] (NaN where unknown).

    Many utterances share a difficulty (a WER of 0 is common), and quantile cuts through a
    tie would put the whole tie on one side; ordering ties by ``tie_break`` (e.g. the
    negated decoder confidence) makes the shares per rank exact.
    """
    n = len(difficulty)
    values = [float("nan") if d is None else float(d) for d in difficulty]
    known = [i for i in range(n) if values[i] == values[i]]
    tb = [0.0] * n if tie_break is None else [0.0 if t is None or t != t else float(t) for t in tie_break]
    known.sort(key=lambda i: (values[i], tb[i]))
    scores = torch.full((n,), float("nan"), dtype=torch.float64)
    for pos, i in enumerate(known):
        scores[i] = (pos + 0.5) / len(known)
    return scores


def _check_signals(available: Sequence[str], needed: Sequence[str], what: str) -> None:
    missing = [s for s in needed if s not in available]
    if missing:
        raise ConfigError(
            f"routing.{what} uses signals {missing} that the corpus has not cached "
            f"(cached: {sorted(available)}); run `flexispeech signals` on the corpus first"
        )


def threshold_router(
    cfg: RoutingConfig, ranks: Sequence[int], signals: dict[str, torch.Tensor], target: float
) -> ThresholdRouter:
    """A ThresholdRouter over ``cfg.weights``, calibrated on ``signals`` to ``target``."""
    _check_signals(list(signals), list(cfg.weights), "weights")
    return ThresholdRouter(ranks, weights=cfg.weights).calibrate(signals, target_mean_rank=target)


def learned_router(
    cfg: RoutingConfig,
    ranks: Sequence[int],
    signals: dict[str, torch.Tensor],
    difficulty: Sequence[float | None],
    target: float,
    seed: int,
) -> LearnedRouter:
    """A LearnedRouter fit to rank labels cut from ``difficulty`` at mean rank ``target``."""
    _check_signals(list(signals), cfg.features, "features")
    tie_break = signals["proxy"].tolist() if "proxy" in signals else None  # higher = harder
    scores = difficulty_scores(difficulty, tie_break)
    known = torch.isfinite(scores)
    if int(known.sum()) < 2 * len(ranks):
        raise ConfigError(
            f"routing.difficulty: only {int(known.sum())} examples have a {cfg.difficulty!r} value; "
            "the learned router needs more (run `flexispeech signals` with a base model)"
        )
    labels = rank_labels(scores[known], ranks, target_mean_rank=target)
    router = LearnedRouter(ranks, features=cfg.features, widths=feature_widths(signals, cfg.features))
    router.fit({k: v[known] for k, v in signals.items()}, labels, label_noise=cfg.label_noise, seed=seed)
    return router


def build_routers(
    cfg: RoutingConfig,
    ranks: Sequence[int],
    signals: dict[str, torch.Tensor],
    difficulty: Sequence[float | None] | None = None,
    seed: int = 0,
) -> tuple[Router, Router]:
    """``(train_router, inference_router)`` for a run.

    Args:
        cfg: the run's routing section.
        ranks: the adapter's allowed ranks.
        signals: the training split's cached signals, name -> [N] (for calibration).
        difficulty: the training split's per-example difficulty (learned routers).
        seed: seeds random routers and the learned router's fit.
    """
    ranks = tuple(ranks)
    if cfg.mode not in MODES:
        raise ConfigError(f"routing.mode: expected one of {list(MODES)}, got {cfg.mode!r}")
    serve_rank = ranks[-1] if cfg.rank is None else cfg.rank
    if serve_rank not in ranks:
        raise ConfigError(f"routing.rank: {serve_rank} is not in adapter.ranks {list(ranks)}")
    target = ranks[-1] / 2 if cfg.target_mean_rank is None else cfg.target_mean_rank
    if cfg.mode == "fixed":
        router = FixedRouter(serve_rank)
        return router, router
    if cfg.mode == "random":
        return RandomRouter(ranks, seed=seed), FixedRouter(serve_rank)

    def routed(kind: str) -> Router:
        if kind == "threshold":
            return threshold_router(cfg, ranks, signals, target)
        if kind == "learned":
            if difficulty is None:
                raise ConfigError(f"routing: the learned router needs the {cfg.difficulty!r} column")
            return learned_router(cfg, ranks, signals, difficulty, target, seed)
        raise ConfigError(f"routing.inference_router: expected threshold or learned, got {kind!r}")

    if cfg.mode == "inconsistent":
        return RandomRouter(ranks, seed=seed), routed(cfg.inference_router)
    router = routed(cfg.mode)
    return router, router
