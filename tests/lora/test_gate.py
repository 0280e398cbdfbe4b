"""The novelty gate: a PPCA distance from the training embeddings, and the router it guards."""

from __future__ import annotations

import json
import math

import pytest
import torch
from lora_models import TinyNet

from flexispeech.errors import ConfigError
from flexispeech.lora import FlexiLoraConfig, RankError
from flexispeech.lora.gate import GatedRouter, NoveltyGate
from flexispeech.lora.io import read_router, save_adapter, save_router
from flexispeech.lora.router import FixedRouter, Router, ThresholdRouter


def gaussian(n: int, scales: torch.Tensor, seed: int) -> torch.Tensor:
    """[n, d] samples with per-dimension standard deviations ``scales`` around 3."""
    gen = torch.Generator().manual_seed(seed)
    return 3.0 + torch.randn(n, scales.numel(), generator=gen) * scales


SCALES = torch.tensor([8.0, 4.0, 2.0, 1.0] + [0.05] * 12)  # 4 strong directions, 12 faint ones


def test_in_domain_scores_about_one_and_the_quantile_sets_the_share_let_through() -> None:
    gate = NoveltyGate.fit(gaussian(4000, SCALES, 0), components=4)
    heldout = gaussian(2000, SCALES, 1)
    assert float(gate.score(heldout).mean()) == pytest.approx(1.0, abs=0.05)
    gate.set_threshold(heldout, 0.95)
    assert float(gate.novel(heldout).float().mean()) == pytest.approx(0.05, abs=0.002)
    assert float(gate.novel(gaussian(2000, SCALES, 2)).float().mean()) == pytest.approx(0.05, abs=0.02)


def test_a_shift_along_a_faint_direction_is_novel() -> None:
    """The residual variance is what sees it: a shift of 0.5 along a direction whose spread is
    0.05 is ten standard deviations, though it is tiny beside the strong directions."""
    gate = NoveltyGate.fit(gaussian(4000, SCALES, 0), components=4)
    gate.set_threshold(gaussian(2000, SCALES, 1), 0.99)
    other = gaussian(500, SCALES, 3)
    other[:, 10] += 0.5
    assert bool(gate.novel(other).all())
    loud = gaussian(500, SCALES, 4)
    loud[:, 0] += 4.0  # half a standard deviation along the strongest direction: in domain
    assert float(gate.novel(loud).float().mean()) < 0.05
    nan = torch.full((1, SCALES.numel()), math.nan)
    assert bool(gate.novel(nan).all())  # no embedding: nothing says it is in domain


def test_gate_round_trips_and_refuses_bad_fits() -> None:
    gate = NoveltyGate.fit(gaussian(300, SCALES, 0), components=3)
    gate.set_threshold(gaussian(300, SCALES, 1), 0.9)
    again = NoveltyGate.from_dict(json.loads(json.dumps(gate.to_dict())))
    x = gaussian(50, SCALES, 2)
    assert torch.equal(again.score(x), gate.score(x)) and again.threshold == gate.threshold
    with pytest.raises(ConfigError, match="at least 2 embeddings"):
        NoveltyGate.fit(torch.ones(1, 4))
    with pytest.raises(ConfigError, match=r"quantile must be in \(0, 1\]"):
        gate.set_threshold(x, 0.0)
    with pytest.raises(ConfigError, match="novelty gate"):
        NoveltyGate.from_dict({"mean": [0.0]})
    with pytest.raises(ConfigError, match="has 4 values, the gate was fit on 16"):
        gate.score(torch.zeros(2, 4))  # another base model's embedding


def test_gated_router_serves_rank_0_to_novel_inputs_and_the_inner_router_to_the_rest() -> None:
    gate = NoveltyGate.fit(gaussian(2000, SCALES, 0), components=4)
    gate.set_threshold(gaussian(1000, SCALES, 1), 0.99)
    inner = ThresholdRouter(ranks=[2, 8], weights={"snr_db": -1.0}, thresholds=[-5.0])  # noisier: rank 8
    router = GatedRouter(inner, gate)
    emb = gaussian(4, SCALES, 5)
    emb[1, 12] += 1.0  # novel
    signals = {"snr_db": torch.tensor([0.0, 0.0, 10.0, 10.0]), "embedding": emb}
    inner_ranks = inner({"snr_db": signals["snr_db"]})
    assert inner_ranks.tolist() == [8, 8, 2, 2]
    assert router(signals).tolist() == [8, 0, 2, 2]
    assert router.ranks == (0, 2, 8) and set(router.signal_names) == {"snr_db", "embedding"}
    again = Router.from_dict(json.loads(json.dumps(router.to_dict())))
    assert isinstance(again, GatedRouter) and torch.equal(again(signals), router(signals))
    static = GatedRouter(FixedRouter(16), gate)  # a static adapter behind the gate
    assert static({"embedding": emb}).tolist() == [16, 0, 16, 16] and static.signal_names == ("embedding",)
    assert GatedRouter(router, gate).router is inner  # gating twice replaces the gate
    with pytest.raises(ConfigError, match="needs the 'embedding' signal"):
        router({"snr_db": signals["snr_db"]})


def test_save_router_gates_a_saved_adapter_without_a_model(tmp_path) -> None:
    model = TinyNet()
    from flexispeech.lora import inject

    inject(model, FlexiLoraConfig(ranks=(16,), target_modules=("q_proj",)))
    adapter = save_adapter(model, tmp_path / "static")
    assert read_router(adapter).describe() == "FixedRouter(rank=16)"  # no router.json: r_max
    gate = NoveltyGate.fit(gaussian(100, SCALES, 0), components=2)
    out = save_router(adapter, GatedRouter(read_router(adapter), gate), tmp_path / "gated")
    assert (out / "adapter_model.safetensors").read_bytes() == (
        adapter / "adapter_model.safetensors"
    ).read_bytes()
    assert not (adapter / "router.json").exists()  # the source is untouched
    loaded = read_router(out)
    assert isinstance(loaded, GatedRouter) and loaded.ranks == (0, 16)  # rank 0 served to a static adapter
    with pytest.raises(RankError, match=r"\[4\] not in the configured ranks"):
        save_router(adapter, FixedRouter(4))


def test_confidence_gate_sends_the_surest_share_to_rank_0() -> None:
    """``ConfidenceGate.at_share``: the held-out share Q with the lowest entropy falls under
    the threshold; behind it, those inputs get rank 0 and the rest the router's rank. The
    form saved in router.json round-trips, and a router saved before this gate still loads."""
    from flexispeech.lora.gate import ConfidenceGate
    from flexispeech.lora.router import FixedRouter, Router

    heldout = torch.arange(100, dtype=torch.float32) / 10  # entropies 0.0 .. 9.9
    sure = ConfidenceGate.at_share("proxy_entropy", heldout, 0.2)
    assert float((heldout < sure.threshold).float().mean()) == pytest.approx(0.2, abs=0.011)
    router = GatedRouter(FixedRouter(4), confident=sure)
    assert router.signal_names == ("proxy_entropy",) and router.ranks == (0, 4)
    ranks = router({"proxy_entropy": torch.tensor([0.5, 1.9, 2.0, 5.0, float("nan")])})
    assert ranks.tolist() == [0, 0, 4, 4, 4]  # NaN: confidence unknown, the router decides
    again = Router.from_dict(router.to_dict())
    assert again({"proxy_entropy": torch.tensor([0.5, 5.0])}).tolist() == [0, 4]
    neither = router.to_dict() | {"gate": None}
    del neither["confident"]
    with pytest.raises(ConfigError, match="needs a novelty gate, a confidence gate or both"):
        Router.from_dict(neither)
    novelty = NoveltyGate.fit(torch.randn(50, 4, generator=torch.Generator().manual_seed(0)), components=2)
    saved_before = {
        "type": "gated",
        "router": {"type": "fixed", "rank": 4},
        "gate": novelty.to_dict(),
        "fallback_rank": 0,
    }
    assert Router.from_dict(saved_before).confident is None  # a router.json without the key loads
    with pytest.raises(ConfigError, match="signal must be one of"):
        ConfidenceGate("snr_db", 1.0)
    with pytest.raises(ConfigError, match="share must be in"):
        ConfidenceGate.at_share("proxy", heldout, 1.0)
