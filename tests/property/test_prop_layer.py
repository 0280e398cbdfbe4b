"""Property tests of the mixed-rank layer: the masked and grouped compute paths equal the
truncated-LoRA definition for any shapes and per-row ranks (rank 0 and single rows
included), and components above a row's rank get no gradient from it."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from flexispeech import FlexiLoraConfig, FlexiLoraLinear

PROPERTY = settings(max_examples=40, deadline=None)
ALPHA = 8.0


@st.composite
def cases(draw):
    ranks = sorted(draw(st.lists(st.integers(0, 12), min_size=1, max_size=4, unique=True)))
    if max(ranks) == 0:
        ranks.append(1)
    n = draw(st.integers(1, 6))
    row_ranks = draw(st.lists(st.sampled_from(ranks), min_size=n, max_size=n))
    return (
        ranks,
        row_ranks,
        draw(st.integers(1, 4)),
        draw(st.integers(1, 17)),
        draw(st.integers(1, 17)),
        draw(st.integers(0, 2**16)),
    )


def layer_for(ranks: list[int], d_in: int, d_out: int, seed: int) -> FlexiLoraLinear:
    torch.manual_seed(seed)
    layer = FlexiLoraLinear(nn.Linear(d_in, d_out), FlexiLoraConfig(ranks=tuple(ranks), alpha=ALPHA))
    with torch.no_grad():
        layer.lora_B.normal_()  # a fresh B is zero: every path would trivially agree
    return layer


def reference(layer: FlexiLoraLinear, x: torch.Tensor, r: int) -> torch.Tensor:
    """base(x) + (α/r)·(x A[:r]ᵀ) B[:, :r]ᵀ, written out for one row x [T, in]."""
    base = x @ layer.base_layer.weight.T + layer.base_layer.bias
    if r == 0:
        return base
    return base + (ALPHA / r) * (x @ layer.lora_A[:r].T) @ layer.lora_B[:, :r].T


@PROPERTY
@given(case=cases())
def test_masked_equals_grouped_equals_reference(case) -> None:
    ranks, row_ranks, t, d_in, d_out, seed = case
    layer = layer_for(ranks, d_in, d_out, seed)
    x = torch.randn(len(row_ranks), t, d_in, generator=torch.Generator().manual_seed(seed))
    layer.rank_slot.ranks = torch.tensor(row_ranks)
    outs = {}
    for path in ("masked", "grouped", "auto"):
        layer.compute_path = path
        with torch.no_grad():
            outs[path] = layer(x)
    for n, r in enumerate(row_ranks):
        want = reference(layer, x[n], r).detach()
        for path, out in outs.items():
            torch.testing.assert_close(
                out[n], want, rtol=1e-4, atol=1e-4, msg=lambda m, path=path, n=n: f"{path} row {n}: {m}"
            )


@PROPERTY
@given(case=cases(), path=st.sampled_from(["masked", "grouped"]))
def test_no_gradient_above_a_rows_rank(case, path: str) -> None:
    ranks, row_ranks, t, d_in, d_out, seed = case
    layer = layer_for(ranks, d_in, d_out, seed)
    layer.compute_path = path
    x = torch.randn(len(row_ranks), t, d_in, generator=torch.Generator().manual_seed(seed))
    layer.rank_slot.ranks = torch.tensor(row_ranks)
    for n, r in enumerate(row_ranks):
        layer.zero_grad(set_to_none=False) if layer.lora_A.grad is not None else None
        layer(x)[n].square().sum().backward()
        assert torch.all(layer.lora_A.grad[r:] == 0) and torch.all(layer.lora_B.grad[:, r:] == 0)
        if r > 0:  # the components in use do learn
            assert layer.lora_B.grad[:, :r].abs().sum() > 0
        layer.lora_A.grad = layer.lora_B.grad = None
