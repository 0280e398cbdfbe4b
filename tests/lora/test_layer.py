"""FlexiLoraLinear against hand-written truncated LoRA, on every compute path."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from flexispeech import FlexiLoraConfig, FlexiLoraLinear
from flexispeech.errors import ConfigError
from flexispeech.lora.deltas import grouped_delta, masked_delta


def make_layer(ranks=(0, 2, 4, 8), scaling="standard", rank_scales=None, seed=0) -> FlexiLoraLinear:
    torch.manual_seed(seed)
    cfg = FlexiLoraConfig(ranks=ranks, alpha=8.0, scaling=scaling, rank_scales=rank_scales)
    layer = FlexiLoraLinear(nn.Linear(12, 10), cfg)
    with torch.no_grad():
        layer.lora_B.normal_()
    return layer


def reference(layer: FlexiLoraLinear, x: torch.Tensor, rank: int, scale: float) -> torch.Tensor:
    """The definition, written out: base(x) + scale * (x @ A[:r].T) @ B[:, :r].T."""
    W, b = layer.base_layer.weight, layer.base_layer.bias
    A, B = layer.lora_A[:rank], layer.lora_B[:, :rank]
    return x @ W.T + b + scale * (x @ A.T) @ B.T


@pytest.mark.parametrize("path", ["auto", "masked", "grouped"])
def test_mixed_ranks_match_truncated_reference(path: str) -> None:
    layer = make_layer()
    layer.compute_path = path
    x = torch.randn(4, 3, 12)
    ranks = torch.tensor([8, 0, 2, 4])
    layer.rank_slot.ranks = ranks
    out = layer(x)
    for n, r in enumerate(ranks.tolist()):
        scale = 8.0 / r if r else 0.0
        torch.testing.assert_close(out[n], reference(layer, x[n], r, scale), rtol=1e-5, atol=1e-5)


def test_rank_zero_is_exactly_the_base_layer() -> None:
    layer = make_layer()
    x = torch.randn(3, 5, 12)
    layer.rank_slot.ranks = torch.tensor([0, 0, 0])
    assert torch.equal(layer(x), layer.base_layer(x))
    layer.rank_slot.ranks = torch.tensor([0, 4, 0])
    out = layer(x)
    assert torch.equal(out[0], layer.base_layer(x)[0]) and torch.equal(out[2], layer.base_layer(x)[2])


def test_scales_standard_rslora_and_overrides() -> None:
    cfg = FlexiLoraConfig(ranks=(0, 4, 16), alpha=8.0, scaling="rslora", rank_scales={4: 3.0})
    assert cfg.scale(0) == 0.0
    assert cfg.scale(4) == 3.0
    assert cfg.scale(16) == pytest.approx(8.0 / math.sqrt(16))
    assert FlexiLoraConfig(ranks=(2, 8), alpha=8.0).scale(2) == 4.0
    nested = FlexiLoraConfig(ranks=(0, 2, 4, 8), alpha=16.0, scaling="nested")
    assert nested.scale_table() == [
        0.0,
        0.0,
        2.0,
        0.0,
        2.0,
        0.0,
        0.0,
        0.0,
        2.0,
    ]  # alpha / r_max at every rank
    assert FlexiLoraConfig(ranks=(8,), alpha=16.0, scaling="nested").scale(8) == FlexiLoraConfig(
        ranks=(8,), alpha=16.0
    ).scale(8)
    with pytest.raises(ConfigError, match="'standard', 'rslora' or 'nested'"):
        FlexiLoraConfig(scaling="dylora")
    layer = make_layer(ranks=(0, 4, 16), scaling="rslora", rank_scales={4: 3.0})
    x = torch.randn(2, 12)
    layer.rank_slot.ranks = torch.tensor([4, 16])
    out = layer(x)
    torch.testing.assert_close(out[0], reference(layer, x[0], 4, 3.0 * 8.0 / 8.0), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out[1], reference(layer, x[1], 16, 2.0), rtol=1e-5, atol=1e-5)


def test_masked_equals_grouped_on_random_batches() -> None:
    layer = make_layer(ranks=(0, 1, 2, 4, 8))
    gen = torch.Generator().manual_seed(1)
    for _ in range(5):
        x = torch.randn(6, 4, 12, generator=gen)
        ranks = torch.tensor([0, 1, 2, 4, 8])[torch.randint(5, (6,), generator=gen)]
        masked = masked_delta(x, layer.lora_A, layer.lora_B, ranks, layer.scale_table)
        grouped = grouped_delta(
            x, layer.lora_A, layer.lora_B, ranks, layer.scales, sorted(set(ranks.tolist()))
        )
        if grouped is None:  # all rows at rank 0
            assert torch.count_nonzero(masked) == 0
        else:
            torch.testing.assert_close(masked, grouped, rtol=1e-5, atol=1e-6)


def test_default_rank_without_context_is_r_max() -> None:
    layer = make_layer()
    x = torch.randn(2, 12)
    torch.testing.assert_close(layer(x), reference(layer, x, 8, 1.0), rtol=1e-5, atol=1e-5)


def test_no_gradient_above_the_rank() -> None:
    layer = make_layer(ranks=(0, 2, 4, 8))
    for path in ("masked", "grouped"):
        layer.compute_path = path
        layer.zero_grad()
        x = torch.randn(3, 2, 12)
        layer.rank_slot.ranks = torch.tensor([2, 0, 4])
        layer(x).pow(2).sum().backward()
        # Components 4..7 are above every row's rank: exactly no gradient.
        assert torch.count_nonzero(layer.lora_A.grad[4:]) == 0
        assert torch.count_nonzero(layer.lora_B.grad[:, 4:]) == 0
        assert torch.count_nonzero(layer.lora_A.grad[:4]) > 0
        # Row 0 (rank 2) alone: its gradient stops at component 2.
        layer.zero_grad()
        layer.rank_slot.ranks = torch.tensor([2])
        layer(x[:1]).sum().backward()
        assert torch.count_nonzero(layer.lora_A.grad[2:]) == 0
        assert torch.count_nonzero(layer.lora_B.grad[:, 2:]) == 0
        assert layer.base_layer.weight.grad is not None  # base is trainable unless injected


def test_fresh_layer_is_the_base_and_shapes() -> None:
    cfg = FlexiLoraConfig(ranks=(2, 8))
    layer = FlexiLoraLinear(nn.Linear(12, 10), cfg)
    assert layer.lora_A.shape == (8, 12) and layer.lora_B.shape == (10, 8)
    x = torch.randn(3, 12)
    assert torch.equal(layer(x), layer.base_layer(x))  # B starts at zero


def test_gaussian_init_draws_a_with_std_one_over_r_max() -> None:
    torch.manual_seed(0)
    base = nn.Linear(4096, 10)
    gaussian = FlexiLoraLinear(base, FlexiLoraConfig(ranks=(0, 2, 4), init="gaussian"))
    kaiming = FlexiLoraLinear(base, FlexiLoraConfig(ranks=(0, 2, 4)))
    A = gaussian.lora_A.detach()
    assert A.std().item() == pytest.approx(1 / 4, rel=0.05) and abs(A.mean().item()) < 0.01
    # kaiming-uniform (PEFT's) is bounded by 1/sqrt(in_features) = 1/64: a different draw
    assert kaiming.lora_A.abs().max().item() <= 1 / 64 and A.abs().max().item() > 0.5
    assert torch.equal(gaussian.lora_B, torch.zeros(10, 4))
    x = torch.randn(3, 4096)
    assert torch.equal(gaussian(x), base(x))  # B at zero: it starts as the base layer


def test_bf16_layer_keeps_dtype() -> None:
    layer = make_layer().to(torch.bfloat16)
    x = torch.randn(2, 3, 12, dtype=torch.bfloat16)
    layer.rank_slot.ranks = torch.tensor([2, 8])
    assert layer(x).dtype == torch.bfloat16


def test_batch_not_a_multiple_of_ranks_is_an_error() -> None:
    layer = make_layer()
    layer.rank_slot.ranks = torch.tensor([2, 4])
    with pytest.raises(RuntimeError, match="not a multiple"):
        layer(torch.randn(3, 12))


def test_rank_slot_keeps_ranks_per_thread_not_on_the_class() -> None:
    """torch 2.11's dynamo took a class-level ``ranks = None`` default for a constant and
    then failed to guard the tensor use_ranks stores (torch.compile broke, fullgraph or
    not); the slot must hold ``ranks`` in each thread's own dict."""
    import threading

    from flexispeech.lora.ranks import RankSlot

    assert "ranks" not in vars(RankSlot) and "plan_cache" not in vars(RankSlot)
    slot = RankSlot()
    assert vars(slot) == {"ranks": None, "host": None, "plan_cache": None}
    slot.ranks = torch.tensor([1])
    seen: list = []
    thread = threading.Thread(target=lambda: seen.append(slot.ranks))
    thread.start()
    thread.join()
    assert seen == [None] and slot.ranks is not None
