"""The loop fallback (``evaluation.fallback``): which hypotheses count as loops, that only
they are decoded again and at the fallback rank, and which hypothesis is kept."""

from __future__ import annotations

import pytest
import torch

from flexispeech.evaluation.fallback import (
    Fallback,
    compression_ratio,
    decode_with_fallback,
    flagged_rows,
    keep_better,
)

SENTENCE = "The secret of life is to look good at a distance."
LOOP = "I don't know. " * 30


def test_compression_ratio_separates_loops_from_speech() -> None:
    assert compression_ratio(LOOP) > 2.4 > compression_ratio(SENTENCE)
    assert compression_ratio("") == 0.0


def test_flagged_rows_need_a_loop_and_another_rank() -> None:
    fallback = Fallback(rank=0)
    texts = [LOOP, SENTENCE, LOOP, LOOP]
    # row 2 is already at the fallback rank; row 3 has no adapter to fall back within
    assert flagged_rows(texts, [4, 4, 0, None], fallback) == [0]
    assert flagged_rows(texts, [4, 4, 8, 16], Fallback(rank=0, threshold=100.0)) == []


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="rank"):
        Fallback(rank=-1)
    with pytest.raises(ValueError, match="threshold"):
        Fallback(rank=0, threshold=0.0)


def test_only_flagged_rows_are_decoded_again_at_the_fallback_rank() -> None:
    calls: list[tuple[list[int], list[int]]] = []
    again = {0: "hello there", 2: LOOP + LOOP}  # row 2's second decode loops even more

    def decode_rows(rows: list[int], ranks: torch.Tensor) -> list[str]:
        calls.append((rows, ranks.tolist()))
        return [again[r] for r in rows]

    texts = [LOOP, SENTENCE, LOOP]
    out, notes = decode_with_fallback(texts, [4, 4, 16], Fallback(rank=8), decode_rows)
    assert calls == [([0, 2], [8, 8])]
    assert out == ["hello there", SENTENCE, LOOP]  # row 2 keeps the hypothesis that loops less
    assert notes[0]["kept"] is True and notes[0]["rank"] == 8 and notes[0]["routed_hyp"] == LOOP
    assert notes[1] == {}
    assert notes[2]["kept"] is False and notes[2]["compression_ratio"] > 2.4


def test_nothing_is_decoded_when_nothing_loops() -> None:
    def decode_rows(rows: list[int], ranks: torch.Tensor) -> list[str]:
        raise AssertionError("decoded again without a loop")

    out, notes = decode_with_fallback([SENTENCE], [4], Fallback(rank=0), decode_rows)
    assert out == [SENTENCE] and notes == [{}]


def test_keep_better_prefers_the_routed_hypothesis_on_a_tie() -> None:
    assert keep_better(LOOP, SENTENCE)
    assert not keep_better(SENTENCE, SENTENCE)


def test_every_rank_is_scored_as_the_fallback_serves_it() -> None:
    from flexispeech.evaluation.fallback import fallback_at_every_rank

    hyps = {
        "a": {0: SENTENCE, 4: LOOP, 16: SENTENCE},
        "b": {0: LOOP + LOOP, 4: LOOP, 16: "fine"},  # rank 0 loops worse: rank 4 keeps its own
        "c": {0: "base", 4: "ok", 16: LOOP},
    }
    out, replaced = fallback_at_every_rank(hyps, Fallback(rank=0))
    assert out["a"] == {0: SENTENCE, 4: SENTENCE, 16: SENTENCE}
    assert out["b"] == hyps["b"]
    assert out["c"] == {0: "base", 4: "ok", 16: "base"}
    assert replaced == {4: 1, 16: 1}
    assert hyps["a"][4] == LOOP  # the input table is left as it was
    with pytest.raises(ValueError, match="not decoded"):
        fallback_at_every_rank(hyps, Fallback(rank=8))
