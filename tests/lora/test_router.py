"""Routers: fixed, random, threshold (calibration), learned; save/load by dict."""

from __future__ import annotations

import pytest
import torch

from flexispeech import FixedRouter, LearnedRouter, RandomRouter, ThresholdRouter
from flexispeech.errors import ConfigError
from flexispeech.lora import rank_labels, router_from_dict
from flexispeech.lora.calibration import mean_rank_proportions


def test_fixed_router() -> None:
    r = FixedRouter(8)
    assert r({"duration": torch.ones(3)}).tolist() == [8, 8, 8]
    assert r.describe() == "FixedRouter(rank=8)"


def test_random_router_is_seeded_and_covers_ranks() -> None:
    sig = {"duration": torch.ones(2000)}
    a, b = RandomRouter((0, 4, 16), seed=3), RandomRouter((0, 4, 16), seed=3)
    ra, rb = a(sig), b(sig)
    assert torch.equal(ra, rb)
    counts = torch.bincount(ra, minlength=17)[[0, 4, 16]]
    assert counts.min() > 550 and counts.sum() == 2000  # about a third each
    weighted = RandomRouter((2, 8), probs=(3, 1), seed=0)(sig)
    assert 0.70 < (weighted == 2).float().mean() < 0.80


def test_threshold_router_by_hand() -> None:
    r = ThresholdRouter((0, 4, 16), weights={"snr_db": -1.0}, thresholds=(-10.0, 5.0))
    # score = -snr: snr 30 -> -30 (rank 0); snr 0 -> 0 (rank 4); snr -20 -> 20 (rank 16)
    assert r({"snr_db": torch.tensor([30.0, 0.0, -20.0, 10.0])}).tolist() == [0, 4, 16, 4]
    assert r({"snr_db": torch.tensor([float("nan")])}).tolist() == [4]  # NaN counts as the mean (0)


def test_mean_rank_proportions_hit_target() -> None:
    ranks = (0, 2, 4, 8, 16)
    for target in (1.0, 4.0, 8.0, 12.0):
        shares = mean_rank_proportions(ranks, target)
        assert sum(shares) == pytest.approx(1.0)
        assert sum(s * r for s, r in zip(shares, ranks)) == pytest.approx(target, abs=1e-6)
    with pytest.raises(ConfigError, match="outside"):
        mean_rank_proportions(ranks, 20.0)


def test_threshold_calibration_to_target_mean_rank_and_quantiles() -> None:
    gen = torch.Generator().manual_seed(0)
    sig = {"snr_db": torch.rand(4000, generator=gen) * 30, "duration": torch.rand(4000, generator=gen) * 20}
    r = ThresholdRouter((0, 2, 4, 8, 16), weights={"snr_db": -1.0, "duration": 0.5})
    r.calibrate(sig, target_mean_rank=6.0)
    assert r(sig).float().mean().item() == pytest.approx(6.0, abs=0.1)
    r.calibrate(sig, quantiles=(0.2, 0.4, 0.6, 0.8))
    assert torch.bincount(r(sig), minlength=17)[[0, 2, 4, 8, 16]].tolist() == [800] * 5
    # harder (lower SNR) examples get higher ranks
    easy = {"snr_db": torch.tensor([29.0]), "duration": torch.tensor([1.0])}
    hard = {"snr_db": torch.tensor([1.0]), "duration": torch.tensor([19.0])}
    assert r(easy).item() == 0 and r(hard).item() == 16


def test_rank_labels_from_difficulty() -> None:
    wer = torch.tensor([0.0, 0.1, 0.2, 0.5, 0.9, 1.3])
    labels = rank_labels(wer, (0, 8, 16), quantiles=(1 / 3, 2 / 3))
    assert labels.tolist() == [0, 0, 8, 8, 16, 16]


def test_learned_router_learns_a_separable_rule() -> None:
    gen = torch.Generator().manual_seed(0)
    snr = torch.rand(600, generator=gen) * 30
    dur = torch.rand(600, generator=gen) * 10
    labels = torch.where(snr < 10, 16, torch.where(snr < 20, 4, 0))
    router = LearnedRouter((0, 4, 16), features=("snr_db", "duration"), hidden=16)
    losses = router.fit({"snr_db": snr, "duration": dur}, labels, epochs=400, lr=0.05)
    assert losses[-1] < 0.3 * losses[0]
    pred = router({"snr_db": snr, "duration": dur})
    assert (pred == labels).float().mean() > 0.9
    assert not any(p.requires_grad for p in router.parameters())  # frozen after fit
    noisy = LearnedRouter((0, 4, 16), features=("snr_db",), hidden=8)
    noisy.fit({"snr_db": snr}, labels, epochs=50, label_noise=0.3)


def test_every_router_round_trips_through_dict() -> None:
    sig = {"snr_db": torch.tensor([3.0, 12.0, 25.0]), "duration": torch.tensor([9.0, 4.0, 1.0])}
    learned = LearnedRouter((0, 4, 16), features=("snr_db", "duration"))
    learned.fit(sig, torch.tensor([16, 4, 0]), epochs=100, lr=0.05)
    routers = [
        FixedRouter(4),
        ThresholdRouter((0, 4, 16), weights={"snr_db": -1.0}).calibrate(sig, target_mean_rank=6.0),
        learned,
    ]
    for router in routers:
        twin = router_from_dict(router.to_dict())
        assert torch.equal(twin(sig), router(sig)), router.describe()
        assert twin.describe() == router.describe()
    rnd = RandomRouter((0, 4), seed=5)
    assert torch.equal(router_from_dict(rnd.to_dict())(sig), RandomRouter((0, 4), seed=5)(sig))
    with pytest.raises(ConfigError, match="unknown router type"):
        router_from_dict({"type": "oracle"})


def test_missing_signal_is_named() -> None:
    with pytest.raises(ConfigError, match=r"needs signals \['snr_db'\]"):
        ThresholdRouter((0, 4), weights={"snr_db": -1.0})({"duration": torch.ones(2)})
