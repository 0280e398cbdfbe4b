import pytest

from flexispeech.evaluation.consensus import consensus_index, word_distance


def test_word_distance_counts_word_edits_and_handles_empty_transcripts() -> None:
    assert word_distance("you have mail", "you have mail") == 0
    assert word_distance("you have mail", "you have me here") == 2  # one substitution, one insertion
    assert word_distance("", "three more words") == 3
    assert word_distance("two words", "") == 2
    assert word_distance("", "") == 0


def test_consensus_is_the_hypothesis_closest_to_all_the_others() -> None:
    hyps = ["in no matter what", "it is no matter", "it's no matter", "it's no matter", "its no matters"]
    # "it's no matter" is 0 from its twin and close to the rest; the outliers are far
    assert consensus_index(hyps) == 2
    assert consensus_index(["a b c", "x y z", "a b c"]) == 0  # a tie between the twins: the first


def test_consensus_applies_the_normaliser_before_comparing() -> None:
    hyps = ["I KNOW THAT", "i know that", "i know"]
    assert consensus_index(hyps) == 1  # raw: the shouted one differs from both in every word
    assert consensus_index(hyps, normalize=str.lower) == 0  # normalised: the first two are one


def test_consensus_of_one_and_of_none() -> None:
    assert consensus_index(["only one"]) == 0
    with pytest.raises(ValueError, match="at least one"):
        consensus_index([])


def test_decode_consensus_decodes_the_other_pool_ranks_once_in_one_call() -> None:
    import torch

    from flexispeech.evaluation.consensus import decode_consensus

    table = {  # (row, rank) -> what that row decodes to at that rank
        (0, 2): "it is no matter", (0, 4): "it's no matter", (0, 8): "it's no matter",
        (2, 2): "the quick fox", (2, 4): "a quick box", (2, 8): "the quick fox",
    }  # fmt: skip
    calls = []

    def decode_rows(rows: list[int], ranks: torch.Tensor) -> list[str]:
        calls.append((rows, ranks.tolist()))
        return [table[(r, k)] for r, k in zip(rows, ranks.tolist())]

    texts = ["it is no matter", "kept as it is", "a quick box"]
    out, picked, notes = decode_consensus(texts, [2, 0, 4], [8, 2, 4], decode_rows)
    # row 1 (rank 0) is left alone; rows 0 and 2 are decoded at the pool ranks they were not routed to
    assert calls == [([0, 0, 2, 2], [4, 8, 2, 8])]
    assert out == ["it's no matter", "kept as it is", "the quick fox"] and picked == [4, 0, 2]
    assert notes[1] == {} and notes[0]["routed_hyp"] == "it is no matter" and notes[2]["picked"] == 2
    assert decode_consensus(["x"], [None], [2, 4], decode_rows)[0] == ["x"] and len(calls) == 1
