import pytest

from flexispeech.evaluation.agreement import consensus_index, word_distance


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
