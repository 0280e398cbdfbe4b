"""Text-task signal caching: surface counts as columns, difficulty labels with tie-break."""

from __future__ import annotations

import math

from flexispeech.data.text_format import (
    add_task_columns,
    load_text_task,
    read_text_task_info,
    write_text_task,
)
from flexispeech.signals.text_cache import cache_surface_signals, difficulty_with_tie_break, score_answer


def test_score_answer() -> None:
    assert score_answer("accuracy", "so she has 1,250 left", ["1250"]) == 1.0
    assert score_answer("accuracy", "#### 12", ["13"]) == 0.0
    assert score_answer("f1", "the Red Fox", ["red fox"]) == 1.0
    assert score_answer("f1", "red dog", ["red fox"]) == 0.5


def test_difficulty_tie_break_orders_ties_by_the_second_score() -> None:
    d = difficulty_with_tie_break([1.0, 1.0, 0.0, 0.0, 0.5], [3.0, 1.0, 2.0, math.nan, 5.0])
    # tie-break order: nan (idx 3), 1.0 (1), 2.0 (2), 3.0 (0), 5.0 (4) -> ranks 0..4, span 0.01/5
    assert d == [0.0 + 0.006, 0.0 + 0.002, 1.0 + 0.004, 1.0 + 0.0, 0.5 + 0.008]


def test_surface_signals_cached_once(tmp_path) -> None:
    rows = [
        {
            "id": "a",
            "prompt": "Mira has 12 apples and buys 3 more. How many?",
            "answer": "15",
            "solution": "",
            "difficulty": 1,
            "source": "t",
            "split": "train",
        },
        {
            "id": "b",
            "prompt": "What is 4 * 5 - 2?",
            "answer": "18",
            "solution": "",
            "difficulty": 2,
            "source": "t",
            "split": "train",
        },
    ]
    task = write_text_task(rows, tmp_path / "t", name="t")
    assert cache_surface_signals(task, "train") is True
    ds = load_text_task(task, "train")
    assert list(ds["signal_n_words"]) == [10.0, 5.0] and list(ds["signal_n_digits"]) == [3.0, 3.0]
    assert list(ds["signal_n_operators"]) == [0.0, 2.0] and list(ds["signal_n_numbers"]) == [2.0, 3.0]
    assert cache_surface_signals(task, "train") is False  # already there: not recomputed
    add_task_columns(task, "train", {"base_correct": [1.0, 0.0]})
    assert list(load_text_task(task, "train")["base_correct"]) == [1.0, 0.0]
    assert (
        "base_correct" not in read_text_task_info(task)["columns"]
    )  # task.json: the columns written; the swap is one step
