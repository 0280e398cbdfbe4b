"""Run routers from config: every mode, consistency, difficulty labels with ties."""

from __future__ import annotations

import pytest
import torch

from flexispeech.errors import ConfigError
from flexispeech.lora.router import FixedRouter, LearnedRouter, RandomRouter, ThresholdRouter
from flexispeech.training.config import RoutingConfig
from flexispeech.training.routing import build_routers, difficulty_scores

RANKS = (0, 2, 4, 8, 16)


def signals(n: int = 400) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    snr = torch.rand(n, generator=gen) * 30
    return {
        "snr_db": snr,
        "duration": torch.rand(n, generator=gen) * 10,
        "proxy": (30 - snr) / 30 + 0.1 * torch.rand(n, generator=gen),
    }


def test_fixed_and_random_modes() -> None:
    tr, inf = build_routers(RoutingConfig(mode="fixed", rank=8), RANKS, signals())
    assert tr is inf and isinstance(tr, FixedRouter) and tr.rank == 8
    tr, inf = build_routers(RoutingConfig(mode="random"), RANKS, signals())
    assert isinstance(tr, RandomRouter) and isinstance(inf, FixedRouter) and inf.rank == 16
    with pytest.raises(ConfigError, match="routing.rank: 3 is not in adapter.ranks"):
        build_routers(RoutingConfig(mode="fixed", rank=3), RANKS, signals())
    with pytest.raises(ConfigError, match="routing.mode"):
        build_routers(RoutingConfig(mode="oracle"), RANKS, signals())


def test_threshold_mode_is_consistent_and_calibrated() -> None:
    sig = signals()
    cfg = RoutingConfig(mode="threshold", target_mean_rank=5.0, weights={"snr_db": -1.0, "duration": 0.2})
    tr, inf = build_routers(cfg, RANKS, sig)
    assert tr is inf and isinstance(tr, ThresholdRouter)
    assert tr(sig).float().mean().item() == pytest.approx(5.0, abs=0.3)
    with pytest.raises(ConfigError, match=r"signals \['speech_activity'\].*flexispeech signals"):
        build_routers(RoutingConfig(mode="threshold", weights={"speech_activity": 1.0}), RANKS, sig)


def test_learned_and_inconsistent_modes() -> None:
    sig = signals()
    wer = (30 - sig["snr_db"]) / 30  # harder when noisier
    cfg = RoutingConfig(mode="learned", target_mean_rank=6.0, features=["snr_db", "duration"])
    tr, inf = build_routers(cfg, RANKS, sig, difficulty=wer.tolist())
    assert tr is inf and isinstance(tr, LearnedRouter)
    ranks = tr(sig).float()
    assert abs(ranks.mean().item() - 6.0) < 1.5
    assert torch.corrcoef(torch.stack([ranks, -sig["snr_db"]]))[0, 1] > 0.8  # noisier -> higher rank
    tr, inf = build_routers(
        RoutingConfig(mode="inconsistent", inference_router="threshold", weights={"snr_db": -1.0}), RANKS, sig
    )
    assert isinstance(tr, RandomRouter) and isinstance(inf, ThresholdRouter)


def test_difficulty_scores_break_ties_and_keep_unknowns() -> None:
    scores = difficulty_scores([0.0, 0.0, 0.5, None, 0.0], tie_break=[0.3, 0.1, 0.0, 0.0, 0.2])
    assert scores[3].isnan()
    order = sorted([0, 1, 2, 4], key=lambda i: float(scores[i]))
    assert order == [1, 4, 0, 2]
    assert scores[[1, 4, 0, 2]].tolist() == pytest.approx([0.125, 0.375, 0.625, 0.875])
