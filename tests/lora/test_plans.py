"""How a batch is grouped by rank (``flexispeech.lora.plans``) and the rule ``auto`` follows."""

from __future__ import annotations

import torch
from torch import nn

from flexispeech import FlexiLoraConfig, FlexiLoraLinear, inject, use_ranks
from flexispeech.lora.plans import (
    FOLD_MIN_TOKENS,
    FOLD_MIN_TRAIN_TOKENS_CPU,
    MAX_SEGMENTS,
    MIN_SEGMENTED_TOKENS,
    Route,
    choose_route,
    make_plan,
    rank_sort_order,
)


def test_plan_is_computed_once_per_ranks_tensor() -> None:
    layer = FlexiLoraLinear(nn.Linear(24, 20), FlexiLoraConfig(ranks=(0, 4, 8, 16), alpha=8.0))
    slot = layer.rank_slot
    slot.ranks = ranks = torch.tensor([4, 0, 8])
    first = slot.plan(3)
    assert slot.plan(3) is first  # shared by every layer of a pass
    assert first.runs == [(0, 1, 4), (1, 2, 0), (2, 3, 8)] and first.span == (0, 3) and first.top == 8
    expanded = slot.plan(6)  # beam search: each rank repeated
    assert expanded.ranks_list == [4, 4, 0, 0, 8, 8]
    ranks[1] = 16  # an in-place edit is a new batch
    assert slot.plan(3).ranks_list == [4, 16, 8]
    slot.ranks = torch.tensor([4, 0, 8])  # equal values, another tensor: another batch
    assert slot.plan(3) is not first and slot.plan(3).ranks_list == [4, 0, 8]


def test_rank_sort_order_makes_one_run_per_rank() -> None:
    ranks = torch.tensor([4, 0, 16, 4, 0, 8])
    order = rank_sort_order(ranks)
    assert ranks[order].tolist() == [16, 8, 4, 4, 0, 0]
    assert len(make_plan(ranks[order]).runs) == 4


def test_span_covers_only_rows_with_a_rank() -> None:
    plan = make_plan(torch.tensor([0, 4, 0, 8, 0]))
    assert plan.span == (1, 4) and plan.nonzero_runs() == [(1, 2, 4), (3, 4, 8)]
    assert make_plan(torch.tensor([0, 0])).span == (0, 0)


def route(
    plan,
    requested="auto",
    device="cpu",
    tokens=MIN_SEGMENTED_TOKENS,
    fusable=True,
    triton_ok=False,
    needs_grad=False,
    **kw,
):
    return choose_route(
        requested,
        plan,
        device_type=device,
        tokens=tokens,
        fusable=fusable,
        triton_ok=triton_ok,
        needs_grad=needs_grad,
        **kw,
    )


def test_auto_route_follows_device_tokens_and_runs() -> None:
    sorted_plan = make_plan(torch.tensor([16, 16, 8, 4, 0, 0]))
    many = MIN_SEGMENTED_TOKENS
    assert route(sorted_plan) == Route("fused", "segmented")  # CPU, FLOP-bound
    assert route(sorted_plan, tokens=many - 1) == Route("fused", "masked")  # a decoding step
    assert route(sorted_plan, device="cuda") == Route("fused", "masked")  # GPU: one block
    assert route(sorted_plan, device="cuda", triton_ok=True) == Route(
        "fused", "masked"
    )  # measured faster eager
    assert route(sorted_plan, "triton", device="cuda", triton_ok=True) == Route(
        "triton", "masked"
    )  # asked for
    assert route(sorted_plan, "masked", device="cuda", triton_ok=True) == Route(
        "fused", "masked"
    )  # asked for torch
    assert route(sorted_plan, "segmented", device="cuda", tokens=1) == Route(
        "fused", "segmented"
    )  # asked for
    # An unsorted batch with more runs than MAX_SEGMENTS: one masked block beats the launches.
    unsorted = make_plan(torch.tensor([4, 8] * (MAX_SEGMENTS // 2 + 1)))
    assert not unsorted.few_runs() and route(unsorted) == Route("fused", "masked")
    assert route(make_plan(torch.tensor([8, 8])), "masked") == Route("fused", "uniform")


def test_auto_folds_a_batch_at_one_rank_with_many_positions() -> None:
    enough = FOLD_MIN_TOKENS
    for device in ("cpu", "cuda"):
        assert route(make_plan(torch.tensor([8, 8])), device=device, tokens=enough) == Route(
            "fold", "uniform"
        )
        assert route(None, default_rank=8, device=device, tokens=enough) == Route("fold", "uniform")
        assert route(make_plan(torch.tensor([0, 0])), device=device, tokens=enough) == Route(
            "fold", "uniform"
        )
    # a decoding step (one position per row) is not folded
    assert route(make_plan(torch.tensor([8, 8])), device="cuda", tokens=enough - 1) == Route(
        "fused", "uniform"
    )
    # mixed ranks: auto keeps the unfolded paths, however many positions
    sorted_plan = make_plan(torch.tensor([16, 16, 8, 4, 0, 0]))
    assert route(sorted_plan, device="cuda", tokens=10**6) == Route("fused", "masked")
    assert route(sorted_plan, device="cpu", tokens=10**6) == Route("fused", "segmented")
    # asked for: folded whatever the size; without the fused node (dropout...), plain runs
    unsorted = make_plan(torch.tensor([4, 8] * (MAX_SEGMENTS // 2 + 1)))
    assert route(unsorted, "fold", tokens=1) == Route("fold", "segmented")
    assert route(sorted_plan, "fold", tokens=1, fusable=False) == Route("plain", "segmented")
    # other requests and the merged copy keep their paths
    assert route(make_plan(torch.tensor([8, 8])), "masked", tokens=10**6) == Route("fused", "uniform")
    assert route(None, default_rank=8, merged_rank=8, tokens=10**6) == Route("merged", "uniform")


def test_auto_folds_a_cpu_training_call_only_from_more_positions() -> None:
    """On a CPU a call that needs gradients folds from ``FOLD_MIN_TRAIN_TOKENS_CPU``
    positions, below it the unfolded node; inference on a CPU and training on a GPU fold
    from ``FOLD_MIN_TOKENS`` as before (benchmarks/RESULTS.md)."""
    enough, train_enough = FOLD_MIN_TOKENS, FOLD_MIN_TRAIN_TOKENS_CPU
    assert train_enough > enough
    for ranks in ([4] * 8, [16] * 8, [64] * 8):
        plan = make_plan(torch.tensor(ranks))
        for tokens in (enough, train_enough - 1):
            assert route(plan, tokens=tokens, needs_grad=True) == Route("fused", "uniform")
        for tokens in (train_enough, 10**6):
            assert route(plan, tokens=tokens, needs_grad=True) == Route("fold", "uniform")
        for tokens in (enough, train_enough - 1, train_enough):
            assert route(plan, tokens=tokens) == Route("fold", "uniform")  # inference
            assert route(plan, device="cuda", tokens=tokens, needs_grad=True) == Route("fold", "uniform")
            assert route(plan, device="cuda", tokens=tokens) == Route("fold", "uniform")
        assert route(plan, device="cuda", tokens=enough - 1, needs_grad=True) == Route("fused", "uniform")
    assert route(None, default_rank=4, tokens=enough, needs_grad=True) == Route("fused", "uniform")
    assert route(None, default_rank=4, tokens=train_enough, needs_grad=True) == Route("fold", "uniform")
    assert route(None, default_rank=4, tokens=enough) == Route("fold", "uniform")
    # asked for: folded in training too; mixed ranks keep their unfolded grouping
    plan = make_plan(torch.tensor([4] * 8))
    assert route(plan, "fold", tokens=enough, needs_grad=True) == Route("fold", "uniform")
    sorted_plan = make_plan(torch.tensor([16, 16, 8, 4, 0, 0]))
    assert route(sorted_plan, tokens=10**6, needs_grad=True) == Route("fused", "segmented")


def test_layer_folds_a_cpu_call_without_autograd_only(monkeypatch) -> None:
    """The layer tells ``choose_route`` whether autograd records the call: on a CPU a
    training call at one rank with ``FOLD_MIN_TOKENS`` positions takes the unfolded node,
    the same call under ``no_grad`` the folded one, and both equal the unfolded node's
    values."""
    import flexispeech.lora.layer as layer_module

    torch.manual_seed(0)
    layer = FlexiLoraLinear(nn.Linear(24, 20), FlexiLoraConfig(ranks=(0, 4, 8, 16), alpha=8.0))
    with torch.no_grad():
        layer.lora_B.normal_()
    folded: list[bool] = []
    real = layer_module.folded_linear
    monkeypatch.setattr(layer_module, "folded_linear", lambda *a, **k: folded.append(True) or real(*a, **k))
    x = torch.randn(4, FOLD_MIN_TOKENS // 4, 24)
    layer.rank_slot.ranks = torch.tensor([4, 4, 4, 4])
    try:
        trained = layer(x)
        assert trained.requires_grad and folded == []  # training: not folded
        with torch.no_grad():
            inferred = layer(x)
        assert folded == [True]  # inference: folded
        layer.compute_path = "masked"  # the unfolded node, asked for
        with torch.no_grad():
            unfolded = layer(x)
    finally:
        layer.rank_slot.ranks = None
    torch.testing.assert_close(trained.detach(), unfolded)
    torch.testing.assert_close(inferred, unfolded, rtol=1e-5, atol=1e-5)


def test_route_of_plain_ops_merged_static_and_compile() -> None:
    sparse = make_plan(torch.tensor([16, 0, 0] * (MAX_SEGMENTS + 1)))
    assert not sparse.few_runs()
    # Unfused (dropout, autocast, fused=False): grouped when the masked block would waste >35%.
    assert route(sparse, fusable=False) == Route("plain", "grouped")
    assert route(make_plan(torch.tensor([8, 16, 16, 16])), fusable=False) == Route("plain", "segmented")
    assert route(make_plan(torch.tensor([8, 16, 8, 16] * 3)), fusable=False) == Route("plain", "masked")
    # grouped asked for: the fused node serves it by runs on a sorted batch, plain ops otherwise
    assert route(make_plan(torch.tensor([16, 8, 0])), "grouped") == Route("fused", "segmented")
    assert route(sparse, "grouped") == Route("plain", "grouped")
    # no context: every row at the default rank, one block
    assert route(None, "triton", default_rank=8, triton_ok=True, device="cuda") == Route("triton", "uniform")
    assert route(None, default_rank=8, triton_ok=True, device="cuda") == Route("fused", "uniform")
    assert route(None, default_rank=8, merged_rank=8) == Route("merged", "uniform")
    assert route(make_plan(torch.tensor([8, 4])), merged_rank=8) == Route("fused", "segmented")
    assert route(None, "static", triton_ok=True) == Route("triton", "static")
    assert route(None, "static", fusable=False) == Route("plain", "static")
    assert route(sorted_plan := make_plan(torch.tensor([4, 0])), compiling=True) == Route(
        "compiled", "static"
    )
    assert route(make_plan(torch.tensor([0, 0])), triton_ok=True, device="cuda") == Route("fused", "uniform")
    assert sorted_plan.top == 4


def test_plan_from_host_values_takes_no_device_read(monkeypatch) -> None:
    """use_ranks knows the ranks on the host: the plan is made without reading the tensor."""
    model = inject(
        nn.Sequential(nn.Linear(24, 20)),
        FlexiLoraConfig(ranks=(0, 4, 8, 16), alpha=8.0, target_modules=("0",)),
    )
    with use_ranks(model, [8, 0, 4]):
        monkeypatch.setattr(
            torch.Tensor, "tolist", lambda *a: (_ for _ in ()).throw(AssertionError("host read"))
        )
        slot = model[0].rank_slot
        plan = slot.plan(6)
        monkeypatch.undo()
    assert plan.ranks_list == [8, 8, 0, 0, 4, 4] and plan.ranks.tolist() == plan.ranks_list
    slot.ranks = torch.tensor([8, 0, 4])
    slot.host = (slot.ranks, slot.ranks._version, [8, 0, 4])
    slot.ranks[0] = 16  # edited in place after use_ranks saw it: the host copy is stale, read again
    assert slot.plan(3).ranks_list == [16, 0, 4]


def test_mask_carries_the_scale_and_is_cached() -> None:
    plan = make_plan(torch.tensor([2, 0, 4]))
    scales = [0.0, 1.0, 2.0, 3.0, 4.0]
    mask = plan.mask(scales, torch.float32, torch.device("cpu"))
    assert mask.tolist() == [[2.0, 2.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [4.0, 4.0, 4.0, 4.0]]
    assert plan.mask(scales, torch.float32, torch.device("cpu")) is mask
