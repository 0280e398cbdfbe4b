"""Generated arithmetic word problems and the GSM8K importer."""

from __future__ import annotations

import json
import random
import re

import pytest

from data_prep.math import generate_problem, prepare_gsm8k, prepare_math
from flexispeech.data.text_format import TEXT_TASK_COLUMNS, load_text_task, read_text_task_info
from flexispeech.errors import FlexispeechError
from flexispeech.evaluation.text_metrics import extract_final_number

_LINE = re.compile(r"^[^:]+: (.+) = (-?\d+)$")


def _replay(line: str) -> int:
    """Evaluate one solution line's arithmetic ("a - b * p / 100 = a - c = d") and check it."""
    expression, result = _LINE.match(line).groups()
    for part in expression.split(" = "):
        assert eval(part.replace("/", "//")) == int(result), line  # integer steps only
    return int(result)


@pytest.mark.parametrize("n_steps", [1, 2, 4, 6])
def test_problem_steps_replay_to_answer(n_steps):
    rng = random.Random(n_steps)
    for _ in range(30):
        problem = generate_problem(rng, n_steps)
        lines = problem["solution"].splitlines()
        assert len(lines) == n_steps + 1 and lines[-1] == f"#### {problem['answer']}"
        values = [_replay(line) for line in lines[:-1]]
        assert all(v > 0 for v in values)
        assert str(values[-1]) == problem["answer"]
        # each step starts from the previous result
        for line, previous in zip(lines[1:-1], values):
            assert _LINE.match(line).group(1).startswith(str(previous))
        assert problem["difficulty"] == n_steps
        assert problem["prompt"].endswith("?") and problem["prompt"].count(".") >= n_steps
        assert extract_final_number(problem["solution"]) == problem["answer"]


def test_generator_is_seeded_and_uses_every_theme():
    assert generate_problem(random.Random(7), 3) == generate_problem(random.Random(7), 3)
    rng = random.Random(0)
    themes = {generate_problem(rng, 2)["theme"] for _ in range(200)}
    assert themes == {"shopping", "travel", "sharing", "rates", "percentages"}


def test_prepare_math_writes_splits_and_is_rerunnable(tmp_path):
    out = prepare_math(tmp_path / "math", n_train=40, n_validation=5, n_test=10, seed=3)
    ds = load_text_task(out)
    assert list(ds) == ["train", "validation", "test"]
    assert [len(ds[s]) for s in ds] == [40, 5, 10]
    assert set(TEXT_TASK_COLUMNS) <= set(ds["train"].column_names)
    prompts = [p for s in ds for p in ds[s]["prompt"]]
    assert len(set(prompts)) == len(prompts)  # no prompt in two splits
    assert set(ds["train"]["difficulty"]) <= set(range(1, 7))
    assert set(ds["test"]["split"]) == {"test"}
    marker = out / "task.json"
    mtime = marker.stat().st_mtime_ns
    prepare_math(out, n_train=40, n_validation=5, n_test=10, seed=3)  # complete: kept
    assert marker.stat().st_mtime_ns == mtime
    with pytest.raises(FlexispeechError, match=r"math: already holds a text task .*differs in n\).*--force"):
        prepare_math(out, n_train=20, n_validation=5, n_test=10, seed=3)  # new options: not silently
    prepare_math(out, n_train=20, n_validation=5, n_test=10, seed=3, force=True)
    assert read_text_task_info(out)["splits"]["train"] == 20


def test_prepare_gsm8k(tmp_path):
    src = tmp_path / "gsm8k"
    src.mkdir()
    records = [
        {"question": "Tom has 3 apples and buys 4 more. How many?", "answer": "3 + 4 = <<3+4=7>>7\n#### 7"},
        {"question": "A shirt costs $1,200 minus $5.", "answer": "1200 - 5 = 1195\nSo 1,195.\n#### 1,195"},
    ]
    (src / "train.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    (src / "test.jsonl").write_text(json.dumps(records[0]) + "\n")
    ds = load_text_task(prepare_gsm8k(src, tmp_path / "out"))
    assert [len(ds["train"]), len(ds["test"])] == [2, 1]
    assert ds["train"]["answer"] == ["7", "1195"]
    assert ds["train"]["difficulty"] == [1, 2]
    assert ds["train"][1]["solution"].endswith("#### 1,195")
    assert set(ds["train"]["source"]) == {"gsm8k"}


def test_gsm8k_from_another_source_is_not_taken_as_built(tmp_path):
    """Same file names, other content: the old task is neither kept nor silently replaced."""
    a, b = tmp_path / "a", tmp_path / "b"
    for src, n in ((a, 7), (b, 8)):
        src.mkdir()
        (src / "train.jsonl").write_text(json.dumps({"question": "q?", "answer": f"#### {n}"}) + "\n")
    out = prepare_gsm8k(a, tmp_path / "out")
    prepare_gsm8k(a, out)  # same source: kept
    with pytest.raises(FlexispeechError, match=r"out: already holds a text task .*--force"):
        prepare_gsm8k(b, out)
    assert load_text_task(prepare_gsm8k(b, out, force=True))["train"]["answer"] == ["8"]


def test_prepare_gsm8k_rejects_bad_records(tmp_path):
    bad = tmp_path / "train.jsonl"
    bad.write_text(json.dumps({"question": "q", "answer": "no final line"}) + "\n")
    with pytest.raises(FlexispeechError, match=r"train\.jsonl:1: .*####"):
        prepare_gsm8k(bad, tmp_path / "out")
    with pytest.raises(FlexispeechError, match="no such file"):
        prepare_gsm8k(tmp_path / "missing", tmp_path / "out")
