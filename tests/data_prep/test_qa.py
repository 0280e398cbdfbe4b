"""Generated fictional-world QA and the SQuAD importer."""

from __future__ import annotations

import json
import random
import re

import pytest

from data_prep.qa import generate_question, make_world, passage, prepare_qa, prepare_squad
from flexispeech.data.text_format import load_text_task
from flexispeech.errors import FlexispeechError


def _facts(prompt: str) -> dict[str, str]:
    """Parse a generated passage back into (subject, relation) -> value."""
    text = prompt.split("\nQuestion:")[0].removeprefix("Passage: ")
    facts = {}
    for sentence in text.split(". "):
        sentence = sentence.rstrip(".")
        for pattern, rel in [
            (r"(.+) is (\d+) years old", "age"),
            (r"(.+) was born in (.+)", "born"),
            (r"(.+) works for (.+)", "employer"),
            (r"(.+) has a population of (\d+)", "population"),
            (r"(.+) is headquartered in (.+)", "town"),
            (r"The chief executive of (.+) is (.+)", "ceo"),
        ]:
            m = re.fullmatch(pattern, sentence)
            if m:
                facts[(m.group(1), rel)] = m.group(2)
                break
    return facts


def test_world_is_consistent():
    rng = random.Random(0)
    for _ in range(50):
        w = make_world(rng)
        for company, d in w.companies.items():
            assert w.people[d["ceo"]]["employer"] == company  # a CEO works for their company
        assert len({d["town"] for d in w.companies.values()}) == len(w.companies)
        assert len({d["age"] for d in w.people.values()}) == len(w.people)
        text = passage(w, rng)
        assert text.count(".") == 3 * len(w.people) + 2 * len(w.towns) + 3 * len(w.companies)


def test_answers_follow_from_the_passage():
    rng = random.Random(1)
    for _ in range(60):
        q = generate_question(rng, 3)
        facts = _facts(q["prompt"])
        question = q["prompt"].split("\nQuestion: ")[1]
        m = re.fullmatch(
            r"What is the population of the town where the company that (.+) works for is headquartered\?",
            question,
        )
        if m:  # replay the three hops through the parsed facts
            employer = facts[(m.group(1), "employer")]
            assert facts[(facts[(employer, "town")], "population")] == q["answer"]
        m = re.fullmatch(r"How old is the chief executive of the company that (.+) works for\?", question)
        if m:
            ceo = facts[(facts[(m.group(1), "employer")], "ceo")]
            assert facts[(ceo, "age")] == q["answer"]
        assert q["difficulty"] == 3 and q["answers"] == [q["answer"]] and q["answer"]


def test_comparison_and_count_answers():
    rng = random.Random(2)
    seen = set()
    for _ in range(200):
        q = generate_question(rng, 2)
        facts = _facts(q["prompt"])
        question = q["prompt"].split("\nQuestion: ")[1]
        seen.add(q["kind"])
        if m := re.fullmatch(r"Who is older, (.+) or (.+)\?", question):
            a, b = m.groups()
            assert q["answer"] == max((a, b), key=lambda p: int(facts[(p, "age")]))
        if m := re.fullmatch(r"How many of the people in the passage work for (.+)\?", question):
            count = sum(1 for (s, rel), v in facts.items() if rel == "employer" and v == m.group(1))
            assert q["answer"] == str(count) and count >= 1
    assert {"compare_age", "count_employees", "employer_hq", "ceo_age"} <= seen


def test_prepare_qa(tmp_path):
    ds = load_text_task(prepare_qa(tmp_path / "qa", n_train=30, n_validation=3, n_test=9, seed=5))
    assert [len(ds[s]) for s in ("train", "validation", "test")] == [30, 3, 9]
    assert set(ds["train"]["difficulty"]) == {1, 2, 3}
    assert all(p.startswith("Passage: ") and "\nQuestion: " in p for p in ds["test"]["prompt"])
    again = load_text_task(prepare_qa(tmp_path / "qa2", n_train=30, n_validation=3, n_test=9, seed=5))
    assert again["test"]["prompt"] == ds["test"]["prompt"]  # seeded


def test_prepare_squad_v1_and_v2(tmp_path):
    src = tmp_path / "squad"
    src.mkdir()
    para = {
        "context": "Denver won Super Bowl 50.",
        "qas": [
            {
                "id": "q1",
                "question": "Who won? ",
                "answers": [{"text": "Denver", "answer_start": 0}, {"text": "Denver", "answer_start": 0}],
            },
            {"id": "q2", "question": "Who lost?", "answers": [], "is_impossible": True},
        ],
    }
    (src / "train-v2.0.json").write_text(
        json.dumps({"version": "v2.0", "data": [{"title": "SB", "paragraphs": [para]}]})
    )
    (src / "dev-v1.1.json").write_text(
        json.dumps(
            {
                "data": [
                    {
                        "title": "SB",
                        "paragraphs": [
                            {
                                "context": "Paris is in France.",
                                "qas": [
                                    {
                                        "id": "d1",
                                        "question": "Where is Paris?",
                                        "answers": [{"text": "France", "answer_start": 12}],
                                    }
                                ],
                            }
                        ],
                    }
                ]
            }
        )
    )
    ds = load_text_task(prepare_squad(src, tmp_path / "out"))
    train, test = ds["train"], ds["test"]
    assert train["id"] == ["squad-q1", "squad-q2"]
    assert train["answer"] == ["Denver", ""] and train["answers"] == [["Denver", "Denver"], []]
    assert train[0]["prompt"] == "Passage: Denver won Super Bowl 50.\nQuestion: Who won?"
    assert test["answer"] == ["France"] and test["difficulty"] == [0]


def test_prepare_squad_rejects_other_json(tmp_path):
    bad = tmp_path / "x.json"
    bad.write_text(json.dumps({"rows": []}))
    with pytest.raises(FlexispeechError, match=r"x\.json: not a SQuAD json"):
        prepare_squad(bad, tmp_path / "out")
