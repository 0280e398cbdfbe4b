"""Final-number extraction and SQuAD-style matching, on hand-written cases."""

from __future__ import annotations

import pytest

from flexispeech.evaluation.text_metrics import (
    exact_match,
    extract_final_number,
    find_numbers,
    normalize_answer,
    numeric_match,
    token_f1,
)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("She has 3 + 4 = 7 apples.\n#### 42", "42"),
        ("Step 1: 10 - 2 = 8\n#### 1,234", "1234"),
        ("So 5 boxes in all. The answer is 1,234.", "1234"),
        ("The answer is $12.50. She had 3 coins.", "12.5"),
        ("It costs $12.50", "12.5"),
        ("The temperature drops to -7", "-7"),
        ("The answer is -3.", "-3"),
        ("He walks 3-4 km, so 12 in total", "12"),  # hyphen between numbers is not a minus
        ("Values 1,2,3", "3"),  # a list, not 123
        ("Total: 2.000", "2"),
        ("#### 0", "0"),
        ("It is 0.5 of the cake", "0.5"),
        ("no digits here", None),
        ("#### none; but earlier we got 17", "17"),  # marker without a number: fall back
        (
            "7 + 1 = 8\n#### 8user\nOne of 2 parts: 8 / 2 = 4\n#### 4",
            "8",
        ),  # the solution ends at its first ####
        ("The answer is 3. No wait, the answer is 5.", "5"),  # a restated answer: the last counts
    ],
)
def test_extract_final_number(text, expected):
    assert extract_final_number(text) == expected


def test_find_numbers_canonical():
    assert find_numbers("a 007 b -1,000.50 c .25 d x-2") == ["7", "-1000.5", "0.25", "2"]


def test_numeric_match():
    assert numeric_match("... so she pays $1,200.00 in the end.", "1200")
    assert not numeric_match("The answer is 12.", "13")
    assert not numeric_match("I don't know", "13")


def test_normalize_answer():
    assert normalize_answer("The  Eiffel Tower!") == "eiffel tower"
    assert normalize_answer("an Apple, a day") == "apple day"


def test_exact_match():
    assert exact_match("the Normoor", "Normoor") == 1.0
    assert exact_match("Normoor town", "Normoor") == 0.0
    assert exact_match("Denver Broncos", ["Broncos", "Denver Broncos"]) == 1.0
    assert exact_match("", []) == 1.0  # SQuAD v2: empty prediction for an unanswerable question


def test_token_f1():
    # pred tokens {denver, broncos, team}, gold {denver, broncos}: P=2/3, R=1, F1=0.8
    assert token_f1("the Denver Broncos team", "Denver Broncos") == pytest.approx(0.8)
    assert token_f1("Broncos", ["Denver Broncos", "Broncos"]) == 1.0
    assert token_f1("Carolina", "Denver Broncos") == 0.0
    assert token_f1("", "Denver") == 0.0
    # repeated tokens count with multiplicity: pred a a b vs gold a b -> P=2/3, R=1
    assert token_f1("x x y", "x y") == pytest.approx(0.8)
