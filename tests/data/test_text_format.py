"""The text-task format: write, read, add columns; interrupted writes read old or new."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from interruptions import views_at_every_kill

from flexispeech.data.text_format import (
    TEXT_TASK_COLUMNS,
    add_task_columns,
    is_text_task,
    load_text_task,
    read_text_task_info,
    write_text_task,
)
from flexispeech.errors import FlexispeechError


def task_rows(answer: str = "4") -> list[dict]:
    return [
        {
            "id": f"q{i}",
            "prompt": f"What is {i} + {i}?",
            "answer": answer if i == 2 else str(2 * i),
            "solution": "",
            "difficulty": i,
            "source": "toy",
            "split": "train" if i < 3 else "test",
        }
        for i in range(1, 4)
    ]


def test_write_read_and_add_columns(tmp_path: Path) -> None:
    task = write_text_task(task_rows(), tmp_path / "t", name="toy", info={"seed": 1})
    info = read_text_task_info(task)
    assert is_text_task(task) and info["splits"] == {"train": 2, "test": 1} and info["info"] == {"seed": 1}
    assert info["difficulty"] == {"train": {"1": 1, "2": 1}, "test": {"3": 1}}
    assert list(load_text_task(task, "train")["answer"]) == ["2", "4"]
    add_task_columns(task, "train", {"signal_n_words": [4.0, 4.0]})
    assert list(load_text_task(task, "train")["signal_n_words"]) == [4.0, 4.0]
    assert set(TEXT_TASK_COLUMNS) <= set(load_text_task(task, "test").column_names)
    with pytest.raises(FlexispeechError, match="part of the format"):
        add_task_columns(task, "train", {"answer": ["a", "b"]})
    with pytest.raises(FlexispeechError, match="duplicate id"):
        write_text_task(task_rows() + task_rows()[:1], tmp_path / "dup", name="x")


def task_view(task: Path) -> str:
    """task.json and every row as JSON, or "incomplete" when it is not a complete task."""
    try:
        info = read_text_task_info(task)
        rows = {split: load_text_task(task, split).to_list() for split in info["splits"]}
    except FlexispeechError:
        return "incomplete"
    return json.dumps([info, rows], sort_keys=True)


def test_add_task_columns_killed_at_every_step_loads_old_or_new(tmp_path: Path) -> None:
    def make_old(d: Path) -> None:
        write_text_task(task_rows(), d / "t", name="toy")
        add_task_columns(d / "t", "train", {"signal_prompt_ppl": [1.0, 2.0]})

    def write(d: Path) -> None:
        add_task_columns(d / "t", "train", {"signal_prompt_ppl": [3.0, 4.0], "base_correct": [1.0, 0.0]})

    old, new, kills = views_at_every_kill(tmp_path, make_old, write, lambda d: task_view(d / "t"))
    assert '"base_correct": 0.0' in new and '"base_correct"' not in old
    assert kills[0][1] == old and all(view in (old, new) for _, view in kills), "a mix of old and new rows"
    assert [view for steps, view in kills if steps[-1:] == ["rename dataset -> dataset.old"]] == [old]


def test_write_text_task_killed_at_every_step_is_new_or_incomplete(tmp_path: Path) -> None:
    old, new, kills = views_at_every_kill(
        tmp_path,
        lambda d: write_text_task(task_rows(), d / "t", name="old"),
        lambda d: write_text_task(task_rows(answer="four"), d / "t", name="new"),
        lambda d: task_view(d / "t"),
    )
    assert old != "incomplete" and '"four"' in new
    assert {view for _, view in kills} <= {"incomplete", new} and "incomplete" in {view for _, view in kills}
