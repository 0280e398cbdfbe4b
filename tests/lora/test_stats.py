"""count_parameters: total and average active adapter parameters."""

from __future__ import annotations

import pytest
from lora_models import TinyNet

from flexispeech import count_parameters


def test_counts_by_hand(tiny: TinyNet) -> None:
    # q_proj 6->7 and fc2 7->5: each rank unit costs (6+7) + (7+5) = 25 parameters.
    counts = count_parameters(tiny)
    assert counts.total == 4 * 25
    assert counts.per_rank == {0: 0, 1: 25, 2: 50, 4: 100}
    assert counts.active_mean is None
    assert count_parameters(tiny, [0, 4, 4, 2]).active_mean == pytest.approx((0 + 100 + 100 + 50) / 4)
    assert count_parameters(tiny, {1: 3.0, 4: 1.0}).active_mean == pytest.approx((3 * 25 + 100) / 4)
    trainable = sum(p.numel() for p in tiny.parameters() if p.requires_grad)
    assert trainable == counts.total


@pytest.mark.parametrize(
    "ranks",
    [[4.7], {4: 2.0, 2: -1.0}, {4: float("nan")}, {4: float("inf")}, "4", [float("nan")], {2.5: 1.0}],
    ids=["fractional", "negative-weight", "nan-weight", "inf-weight", "text", "nan-rank", "fractional-key"],
)
def test_a_rank_or_weight_that_means_nothing_is_refused(tiny: TinyNet, ranks) -> None:
    """4.7 was truncated to 4 and a negative weight gave a negative mean, silently."""
    from flexispeech.lora import RankError

    with pytest.raises(RankError, match="count_parameters"):
        count_parameters(tiny, ranks)
    assert count_parameters(tiny, [4.0, 2]).active_mean == pytest.approx(75.0)  # whole floats are ranks
