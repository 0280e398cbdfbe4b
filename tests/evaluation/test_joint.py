import math

import pytest
import torch

from flexispeech.evaluation.joint import decode_joint, joint_pick


def test_joint_pick_is_the_highest_summed_score_ties_to_the_first_and_never_nan() -> None:
    # candidate 0 (the base model's): each rank finds it fairly likely; candidate 1 (the
    # adapter's): the adapter is sure of it, the base model is not
    assert joint_pick(torch.tensor([[-2.0, -6.0], [-12.0, -1.0]])) == 0
    assert joint_pick(torch.tensor([[-2.0, -30.0], [-5.0, -1.0]])) == 1
    assert joint_pick(torch.tensor([[-3.0, -3.0], [-4.0, -2.0]])) == 0  # a tie: the first
    assert joint_pick(torch.tensor([[math.nan, -1.0], [-9.0, -9.0]])) == 1
    assert joint_pick(torch.full((2, 2), math.nan)) == 0


def test_decode_joint_scores_only_rows_whose_ranks_disagree_and_serves_the_joint_pick() -> None:
    table = {  # (row, rank) -> what that row decodes to at that rank
        (0, 0): "to lock the conference", (0, 4): "too luck the conference",
        (2, 0): "for teen", (2, 4): "fourteen",
        (3, 0): "Call Stella", (3, 4): "call stella",
    }  # fmt: skip
    logp = {  # (row, scoring rank, text) -> log-probability
        (0, 0, "to lock the conference"): -2.0, (0, 0, "too luck the conference"): -14.0,
        (0, 4, "to lock the conference"): -5.0, (0, 4, "too luck the conference"): -1.0,
        (2, 0, "for teen"): -3.0, (2, 0, "fourteen"): -4.0,
        (2, 4, "for teen"): -20.0, (2, 4, "fourteen"): -0.5,
    }  # fmt: skip
    decoded, scored = [], []

    def decode_rows(rows: list[int], ranks: torch.Tensor) -> list[str]:
        decoded.append((rows, ranks.tolist()))
        return [table[(r, k)] for r, k in zip(rows, ranks.tolist())]

    def score_rows(rows: list[int], rank: int, candidates: list[list[str]]) -> torch.Tensor:
        scored.append((rows, rank))
        return torch.tensor([[logp[(r, rank, c[j])] for j, r in enumerate(rows)] for c in candidates])

    texts = ["too luck the conference", "left alone", "fourteen", "call stella"]
    out, picked, notes = decode_joint(texts, [4, 0, 4, 4], [0], decode_rows, score_rows, str.lower)
    # every adapter row is decoded at rank 0 in one call; row 1 (rank 0, a gate's) is not
    assert decoded == [([0, 2, 3], [0, 0, 0])]
    # row 3's two hypotheses agree after normalising: not scored; one scoring pass per rank
    assert scored == [([0, 2], 0), ([0, 2], 4)]
    # row 0: the base model vetoes the adapter's "too luck" (summed -15 against -7); row 2:
    # the adapter's "fourteen" (-4.5 against -23)
    assert out == ["to lock the conference", "left alone", "fourteen", "call stella"]
    assert picked == [0, 0, 4, 4]
    assert notes[1] == {} and "scores" not in notes[3] and notes[3]["picked"] == 4
    assert notes[0]["scores"] == {"0": {"0": -2.0, "4": -5.0}, "4": {"0": -14.0, "4": -1.0}}
    assert notes[0]["routed_hyp"] == "too luck the conference" and notes[0]["routed_rank"] == 4


def test_decode_joint_groups_rows_by_their_ranks_and_scores_each_group_at_its_own() -> None:
    """Pool [0, 2]: a row routed to 2 has the candidates of ranks 0 and 2, one routed to 8
    those of 0, 2 and 8; each group is scored at its own ranks only."""
    table = {(0, 0): "a", (0, 2): "b", (1, 0): "a", (1, 2): "c", (1, 8): "d"}
    logp = {0: {"a": -1.0, "b": -5.0, "c": -5.0, "d": -2.0},
            2: {"a": -4.0, "b": -1.0, "c": -3.0, "d": -2.0},
            8: {"a": -9.0, "c": -9.0, "d": -1.0}}  # fmt: skip
    scored = []

    def decode_rows(rows: list[int], ranks: torch.Tensor) -> list[str]:
        return [table[(r, k)] for r, k in zip(rows, ranks.tolist())]

    def score_rows(rows: list[int], rank: int, candidates: list[list[str]]) -> torch.Tensor:
        scored.append((rows, rank, len(candidates)))
        return torch.tensor([[logp[rank][c[j]] for j in range(len(rows))] for c in candidates])

    out, picked, notes = decode_joint(["b", "d"], [2, 8], [0, 2], decode_rows, score_rows)
    assert sorted(scored) == [([0], 0, 2), ([0], 2, 2), ([1], 0, 3), ([1], 2, 3), ([1], 8, 3)]
    # row 0: a = -5, b = -6; row 1: a = -14, c = -17, d = -5
    assert out == ["a", "d"] and picked == [0, 8]
    assert set(notes[1]["scores"]) == {"0", "2", "8"} and notes[1]["hyps"] == {"0": "a", "2": "c", "8": "d"}


def test_decode_joint_needs_a_rank_and_leaves_a_batch_without_adapter_rows_alone() -> None:
    def never(*_args: object) -> list[str]:
        raise AssertionError("nothing to decode or score")

    for bad in ([], [-1]):
        with pytest.raises(ValueError, match="one or more ranks"):
            decode_joint(["x"], [4], bad, never, never)  # type: ignore[arg-type]
    assert decode_joint(["x", "y"], [None, 0], [0, 4], never, never)[0] == ["x", "y"]  # type: ignore[arg-type]


def test_a_weight_on_the_base_models_score_changes_its_vote_not_the_notes() -> None:
    """{0: 0.25}: row 0's "too luck" now wins (-4.5 against -5.5), and rank 0's -inf still
    vetoes row 1's "fourteen"; weight 0 ignores rank 0 even where it scores -inf (no NaN). The notes keep the
    unweighted scores. Fails if the weight goes on the candidate instead of the scoring rank."""
    hyps = {(0, 0): "to lock", (0, 4): "too luck", (1, 0): "for teen", (1, 4): "fourteen"}
    logp = {
        (0, "to lock"): -2.0, (0, "too luck"): -14.0, (4, "to lock"): -5.0, (4, "too luck"): -1.0,
        (0, "for teen"): -3.0, (0, "fourteen"): float("-inf"), (4, "for teen"): -20.0, (4, "fourteen"): -0.5,
    }  # fmt: skip

    def decode_rows(rows: list[int], ranks: torch.Tensor) -> list[str]:
        return [hyps[(r, k)] for r, k in zip(rows, ranks.tolist())]

    def score_rows(rows: list[int], rank: int, candidates: list[list[str]]) -> torch.Tensor:
        return torch.tensor([[logp[(rank, c[j])] for j in range(len(rows))] for c in candidates])

    texts, ranks = ["too luck", "fourteen"], [4, 4]
    plain, picked, _ = decode_joint(texts, ranks, [0], decode_rows, score_rows)
    assert plain == ["to lock", "for teen"] and picked == [0, 0]  # -inf: rank 0 vetoes "fourteen"
    out, picked, notes = decode_joint(texts, ranks, [0], decode_rows, score_rows, weights={0: 0.25})
    assert out == ["too luck", "for teen"] and picked == [4, 0]
    assert notes[0]["scores"] == {"0": {"0": -2.0, "4": -5.0}, "4": {"0": -14.0, "4": -1.0}}
    out, picked, _ = decode_joint(texts, ranks, [0], decode_rows, score_rows, weights={0: 0.0})
    assert out == ["too luck", "fourteen"] and picked == [4, 4]
    for bad in (-1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="weights"):
            decode_joint(texts, ranks, [0], decode_rows, score_rows, weights={0: bad})
