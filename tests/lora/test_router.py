"""Routers: fixed, random, threshold (calibration), learned; save/load by dict."""

from __future__ import annotations

import json

import pytest
import torch

from flexispeech import FixedRouter, LearnedRouter, RandomRouter, ThresholdRouter
from flexispeech.errors import ConfigError
from flexispeech.lora import Router, rank_labels, router_from_dict
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
    assert not router.training and len(losses) == 400


def test_learned_router_fit_is_seeded_and_label_noise_takes_effect() -> None:
    gen = torch.Generator().manual_seed(1)
    sig = {"snr_db": torch.rand(300, generator=gen) * 30}
    labels = torch.where(sig["snr_db"] < 10, 16, torch.where(sig["snr_db"] < 20, 4, 0))

    def fit(noise: float, seed: int) -> tuple[LearnedRouter, list[float]]:
        router = LearnedRouter((0, 4, 16), features=("snr_db",), hidden=8)
        return router, router.fit(sig, labels, epochs=60, lr=0.05, label_noise=noise, seed=seed)

    (a, loss_a), (b, loss_b) = fit(0.3, seed=2), fit(0.3, seed=2)
    assert loss_a == loss_b and torch.equal(a(sig), b(sig))  # same labels and seed: same router
    _, clean = fit(0.0, seed=2)
    # 30% of labels redrawn every epoch: a noise floor the clean fit does not have
    assert len(loss_a) == 60 and min(loss_a[-10:]) > 2 * max(clean[-10:])
    assert (a(sig) == labels).float().mean() > 0.8  # the rule survives the noise
    assert not a.training and not any(p.requires_grad for p in a.parameters())


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


ROUTERS = [
    FixedRouter(4),
    RandomRouter((0, 4, 16), probs=(1, 2, 1), seed=7),
    ThresholdRouter(
        (0, 4, 16),
        weights={"snr_db": -1.0, "proxy": 2.0},
        thresholds=(-1.0, 1.0),
        means={"snr_db": 15.0, "proxy": 0.5},
        stds={"snr_db": 5.0, "proxy": 0.25},
    ),
    LearnedRouter((0, 4, 16), features=("duration", "snr_db"), hidden=4),
]


@pytest.mark.parametrize("router", ROUTERS, ids=lambda r: r.kind)
def test_every_router_is_a_router_with_its_ranks_and_signals(router: Router) -> None:
    expected_signals = {
        "fixed": (),
        "random": (),
        "threshold": ("snr_db", "proxy"),
        "learned": ("duration", "snr_db"),
    }
    assert isinstance(router, Router)
    assert router.signal_names == expected_signals[router.kind]
    sig = {
        "snr_db": torch.tensor([3.0, 12.0, 25.0, 40.0]),
        "proxy": torch.tensor([0.1, 0.9, 0.5, 0.0]),
        "duration": torch.tensor([9.0, 4.0, 1.0, 2.0]),
    }
    ranks = router(sig)
    assert ranks.dtype == torch.long and ranks.shape == (4,) and set(ranks.tolist()) <= set(router.ranks)
    assert router(sig, 4).shape == (4,)  # the batch size beside the signals must agree with them
    with pytest.raises(ConfigError, match="disagree on the batch size"):
        router(sig, 5)
    if not router.signal_names:  # a router that reads no signal routes a batch size alone
        assert router({}, 3).shape == (3,)
    if router.signal_names:  # a router reads exactly its signal_names: without one, it names it
        missing = {k: v for k, v in sig.items() if k != router.signal_names[0]}
        with pytest.raises(ConfigError, match=router.signal_names[0]):
            router(missing)
    data = json.loads(json.dumps(router.to_dict()))  # what router.json holds
    twin = Router.from_dict(data)
    assert type(twin) is type(router) and twin.to_dict() == data and twin.ranks == router.ranks
    assert (
        twin.signal_names == router.signal_names
        and type(router).from_dict(data).describe() == router.describe()
    )
    if router.kind != "random":  # a random router's twin starts its own seeded stream
        assert torch.equal(twin(sig), router(sig))


def test_from_dict_on_a_subclass_only_builds_that_kind() -> None:
    with pytest.raises(ConfigError, match="'fixed' router is not a ThresholdRouter"):
        ThresholdRouter.from_dict(FixedRouter(2).to_dict())
    with pytest.raises(ConfigError, match="fixed router: .*unexpected keyword argument 'rnak'"):
        Router.from_dict({"type": "fixed", "rnak": 2})


def test_router_files_saved_before_the_base_class_still_load() -> None:
    """router.json as saved by earlier versions (the to_dict forms have not changed)."""
    threshold = Router.from_dict(
        {
            "type": "threshold",
            "ranks": [0, 8],
            "weights": {"snr_db": -1.0},
            "thresholds": [-10.0],
            "means": {"snr_db": 20.0},
            "stds": {"snr_db": 2.0},
        }
    )
    assert threshold({"snr_db": torch.tensor([45.0, 19.0])}).tolist() == [0, 8]  # z = 12.5 and -0.5
    learned = Router.from_dict(
        {
            "type": "learned",
            "ranks": [2, 8],
            "features": ["snr_db"],
            "hidden": 1,
            "state": {
                "mean": [10.0],
                "std": [5.0],
                "net.0.weight": [[1.0]],
                "net.0.bias": [0.0],
                "net.2.weight": [[-1.0], [1.0]],
                "net.2.bias": [0.0, 0.0],
            },
        }
    )
    assert learned({"snr_db": torch.tensor([0.0, 30.0])}).tolist() == [2, 8]
    assert not any(p.requires_grad for p in learned.parameters())
    assert Router.from_dict({"type": "random", "ranks": [0, 4], "probs": [0.5, 0.5], "seed": 3}).seed == 3


def test_neutral_value_is_the_standardisation_mean() -> None:
    threshold = ROUTERS[2]
    assert threshold.neutral_value("proxy") == 0.5 and threshold.neutral_value("duration") == 0.0
    learned = LearnedRouter((0, 4), features=("snr_db", "proxy"))
    learned.fit(
        {"snr_db": torch.tensor([10.0, 30.0]), "proxy": torch.tensor([1.0, 3.0])},
        torch.tensor([4, 0]),
        epochs=2,
    )
    assert learned.neutral_value("proxy") == pytest.approx(2.0) and learned.neutral_value(
        "snr_db"
    ) == pytest.approx(20.0)
    assert FixedRouter(2).neutral_value("proxy") == 0.0
