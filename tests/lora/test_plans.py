"""How a batch is grouped by rank (``flexispeech.lora.plans``) and the rule ``auto`` follows."""

from __future__ import annotations

import torch
from torch import nn

from flexispeech import FlexiLoraConfig, FlexiLoraLinear
from flexispeech.lora.plans import MAX_SEGMENTS, MIN_SEGMENTED_TOKENS, make_plan, rank_sort_order


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


def test_auto_fused_path_follows_device_tokens_and_runs() -> None:
    sorted_plan = make_plan(torch.tensor([16, 16, 8, 4, 0, 0]))
    many = MIN_SEGMENTED_TOKENS
    assert sorted_plan.fused_path("auto", "cpu", many) == "segmented"  # CPU, FLOP-bound
    assert sorted_plan.fused_path("auto", "cpu", many - 1) == "masked"  # a decoding step
    assert sorted_plan.fused_path("auto", "cuda", many) == "masked"  # GPU: one block
    assert sorted_plan.fused_path("segmented", "cuda", 1) == "segmented"  # asked for
    # An unsorted batch with more runs than MAX_SEGMENTS: one masked block beats the launches.
    unsorted = make_plan(torch.tensor([4, 8] * (MAX_SEGMENTS // 2 + 1)))
    assert not unsorted.few_runs() and unsorted.fused_path("auto", "cpu", many) == "masked"
    assert make_plan(torch.tensor([8, 8])).fused_path("masked") == "uniform"


def test_mask_carries_the_scale_and_is_cached() -> None:
    plan = make_plan(torch.tensor([2, 0, 4]))
    scales = [0.0, 1.0, 2.0, 3.0, 4.0]
    mask = plan.mask(scales, torch.float32, torch.device("cpu"))
    assert mask.tolist() == [[2.0, 2.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [4.0, 4.0, 4.0, 4.0]]
    assert plan.mask(scales, torch.float32, torch.device("cpu")) is mask
