"""The folded path (``flexispeech.lora.fold``): what it costs, and that it is the same function.

Values and gradients against the written-out definition are in test_kernels.py (``fold``
is one of its paths); here: its cost follows the rank, and it never changes the weights.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from flexispeech import FlexiLoraConfig, FlexiLoraLinear
from flexispeech.lora.fold import fold_weight, folded_linear

D_IN, D_OUT, ROWS, POS = 48, 40, 4, 400  # 1,600 positions: folded by auto at one rank


def layer() -> FlexiLoraLinear:
    torch.manual_seed(0)
    lay = FlexiLoraLinear(nn.Linear(D_IN, D_OUT), FlexiLoraConfig(ranks=(0, 4, 16, 32), alpha=8.0))
    with torch.no_grad():
        lay.lora_B.normal_()
    return lay


def forward_flops(lay: FlexiLoraLinear, ranks: list[int], path: str = "auto") -> int:
    x = torch.randn(ROWS, POS, D_IN)
    lay.compute_path = path
    lay.rank_slot.ranks = torch.tensor(ranks)
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            lay(x)
    finally:
        lay.rank_slot.ranks = None
    return counter.get_total_flops()


def test_folding_costs_the_base_plus_a_fold_in_proportion_to_the_rank() -> None:
    lay = layer()
    base = 2 * ROWS * POS * D_IN * D_OUT
    fold = 2 * D_OUT * D_IN  # per unit of rank, per run
    assert forward_flops(lay, [0] * ROWS) == base
    assert forward_flops(lay, [4] * ROWS) == base + fold * 4
    assert forward_flops(lay, [32] * ROWS) == base + fold * 32
    # mixed ranks fold only when asked: one fold per run
    assert forward_flops(lay, [32, 16, 4, 0], "fold") == base + fold * (32 + 16 + 4)
    # so a lower rank always costs less, and rank 0 is the base
    costs = [forward_flops(lay, [r] * ROWS) for r in (0, 4, 16, 32)]
    assert costs == sorted(set(costs))


def test_fold_weight_is_the_rank_update_and_leaves_the_weights_alone() -> None:
    lay = layer()
    before = {k: v.clone() for k, v in lay.state_dict().items()}
    W, A, B = lay.base_layer.weight, lay.lora_A, lay.lora_B
    torch.testing.assert_close(fold_weight(W, A, B, 16, 0.5), W + 0.5 * B[:, :16] @ A[:16])
    assert fold_weight(W, A, B, 0, 0.5) is W
    x = torch.randn(ROWS, 7, D_IN)
    folded_linear(x, lay.base_layer, A, B, [(0, 2, 32), (2, 4, 0)], lay.scales).sum().backward()
    assert all(torch.equal(v, before[k]) for k, v in lay.state_dict().items())
    # nested ranks: the components above the top rank of the batch get no gradient
    assert torch.count_nonzero(A.grad[32:]) == 0 and torch.count_nonzero(A.grad[:32]) > 0


def update_error(layer: FlexiLoraLinear, x: torch.Tensor, path: str) -> float:
    """The share of the rank-16 update [rows, ...] that ``path`` loses against exact
    arithmetic on the layer's own (bf16) weights."""
    W, A, B = (t.detach().double() for t in (layer.base_layer.weight, layer.lora_A, layer.lora_B))
    update = (x.double() @ A.T * layer.scales[16]) @ B.T
    layer.compute_path = path
    layer.rank_slot.ranks = torch.tensor([16] * x.shape[0])
    try:
        with torch.no_grad():
            out = layer(x).double()
    finally:
        layer.rank_slot.ranks = None
    return float((out - x.double() @ W.T - update).norm() / update.norm())


def test_bf16_fold_loses_no_more_of_a_small_update_than_the_unfolded_node() -> None:
    """A folded bf16 weight rounds the update to the base weight's grid; the unfolded node
    rounds ``base(x) + update`` to the output's grid, which costs as much."""
    torch.manual_seed(0)
    x = torch.randn(4, 300, 256, dtype=torch.bfloat16)
    for b_std in (1e-4, 1e-3, 1e-2):  # updates of about 0.1 %, 1 % and 10 % of the output
        lay = FlexiLoraLinear(nn.Linear(256, 256, bias=False), FlexiLoraConfig(ranks=(0, 16), alpha=16.0))
        with torch.no_grad():
            lay.base_layer.weight.normal_(0, 0.03)
            lay.lora_A.normal_(0, 256**-0.5)
            lay.lora_B.normal_(0, b_std)
        lay = lay.to(torch.bfloat16)
        folded, unfolded = update_error(lay, x, "fold"), update_error(lay, x, "masked")
        assert folded < 1.1 * unfolded + 1e-3, (b_std, folded, unfolded)
