"""Reading-comprehension QA with graded reasoning depth, and a SQuAD v1/v2 importer.

``prepare_qa`` generates, per example, a small fictional world (people, towns, companies
with ages, populations, founding years, employers, headquarters, chief executives), writes
it as a shuffled passage, and asks one question whose depth is known:

- difficulty 1: a single fact ("How old is Ardel Vosk?");
- difficulty 2: two hops ("In which town is the company that Ardel Vosk works for
  headquartered?"), a comparison ("Who is older, A or B?") or a count over the passage;
- difficulty 3: three hops ("What is the population of the town where the company that
  Ardel Vosk works for is headquartered?") or a count behind a hop.

Every answer is a short span: a name or an integer. Entities are made-up names, so a model
cannot answer from memorised world knowledge. ``prepare_squad`` imports SQuAD json files.
Rows follow :mod:`flexispeech.data.text_format`, plus ``answers`` (every accepted answer; empty for
unanswerable SQuAD v2 questions) and, for generated data, ``kind`` (the question type).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from data_prep.folder import check_counts, check_out, file_digests, read_text
from flexispeech.data.text_format import write_text_task
from flexispeech.errors import FlexispeechError

_ONSETS = ("b", "br", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "th", "st")
_VOWELS = ("a", "e", "i", "o", "u", "ae", "io", "ou")
_CODAS = ("", "n", "l", "r", "s", "th", "rk", "nd", "m")
_TOWN_SUFFIX = ("ford", "wick", "haven", "stead", "by", "mouth", "field", "moor")
_COMPANY_SUFFIX = ("Industries", "Works", "Labs", "Foods", "Textiles", "Logistics", "Robotics")


def _word(rng: random.Random, syllables: int) -> str:
    return "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS) for _ in range(syllables))


@dataclass
class World:
    people: dict[str, dict]  # name -> {age, born, employer}
    towns: dict[str, dict]  # name -> {population, founded}
    companies: dict[str, dict]  # name -> {founded, town, ceo}


def _unique(rng: random.Random, make, taken: set[str]) -> str:
    while True:
        value = make()
        if value not in taken:
            taken.add(value)
            return value


def make_world(rng: random.Random) -> World:
    """A consistent little world: distinct names, ages and populations (no ties to compare)."""
    n_towns, n_companies, n_people = rng.randint(2, 4), rng.randint(2, 3), rng.randint(3, 6)
    n_towns = max(n_towns, n_companies)  # one headquarters per town keeps "the company in T" unique
    taken: set[str] = set()
    town_names = [
        _unique(rng, lambda: (_word(rng, 1) + rng.choice(_TOWN_SUFFIX)).capitalize(), taken)
        for _ in range(n_towns)
    ]
    company_names = [
        _unique(rng, lambda: f"{_word(rng, 2).capitalize()} {rng.choice(_COMPANY_SUFFIX)}", taken)
        for _ in range(n_companies)
    ]
    people_names = [
        _unique(rng, lambda: f"{_word(rng, 2).capitalize()} {_word(rng, 2).capitalize()}", taken)
        for _ in range(n_people)
    ]
    pops = rng.sample(range(800, 95_000, 100), n_towns)
    towns = {t: {"population": p, "founded": rng.randint(1150, 1950)} for t, p in zip(town_names, pops)}
    hqs = rng.sample(town_names, n_companies)
    ages = rng.sample(range(19, 80), n_people)
    # every company gets at least one employee (its chief executive), then the rest at random
    employers = company_names + [rng.choice(company_names) for _ in range(n_people - n_companies)]
    rng.shuffle(employers)
    people = {
        p: {"age": a, "born": rng.choice(town_names), "employer": e}
        for p, a, e in zip(people_names, ages, employers)
    }
    companies = {}
    for c, town in zip(company_names, hqs):
        staff = [p for p in people_names if people[p]["employer"] == c]
        companies[c] = {"founded": rng.randint(1850, 2020), "town": town, "ceo": rng.choice(staff)}
    return World(people, towns, companies)


def passage(world: World, rng: random.Random) -> str:
    """The world's facts as sentences, in random order (so a hop is not just the next line)."""
    facts = []
    for p, d in world.people.items():
        facts += [
            f"{p} is {d['age']} years old.",
            f"{p} was born in {d['born']}.",
            f"{p} works for {d['employer']}.",
        ]
    for t, d in world.towns.items():
        facts += [f"{t} has a population of {d['population']}.", f"{t} was founded in {d['founded']}."]
    for c, d in world.companies.items():
        facts += [
            f"{c} is headquartered in {d['town']}.",
            f"{c} was founded in {d['founded']}.",
            f"The chief executive of {c} is {d['ceo']}.",
        ]
    rng.shuffle(facts)
    return " ".join(facts)


def _question(world: World, rng: random.Random, difficulty: int) -> tuple[str, str, str]:
    """(kind, question, answer) of the given difficulty about ``world``."""
    P, T, C = world.people, world.towns, world.companies
    p, c, t = rng.choice(sorted(P)), rng.choice(sorted(C)), rng.choice(sorted(T))
    if difficulty == 1:
        options = [
            ("age", f"How old is {p}?", str(P[p]["age"])),
            ("birthplace", f"In which town was {p} born?", P[p]["born"]),
            ("employer", f"Which company does {p} work for?", P[p]["employer"]),
            ("headquarters", f"In which town is {c} headquartered?", C[c]["town"]),
            ("population", f"What is the population of {t}?", str(T[t]["population"])),
            ("town_founded", f"In which year was {t} founded?", str(T[t]["founded"])),
            ("ceo", f"Who is the chief executive of {c}?", C[c]["ceo"]),
        ]
    elif difficulty == 2:
        p2 = rng.choice(sorted(set(P) - {p}))
        t2 = rng.choice(sorted(set(T) - {t}))
        employer = P[p]["employer"]
        options = [
            (
                "employer_hq",
                f"In which town is the company that {p} works for headquartered?",
                C[employer]["town"],
            ),
            ("ceo_age", f"How old is the chief executive of {c}?", str(P[C[c]["ceo"]]["age"])),
            (
                "birthplace_population",
                f"What is the population of the town where {p} was born?",
                str(T[P[p]["born"]]["population"]),
            ),
            (
                "employer_founded",
                f"In which year was the company that {p} works for founded?",
                str(C[employer]["founded"]),
            ),
            ("compare_age", f"Who is older, {p} or {p2}?", p if P[p]["age"] > P[p2]["age"] else p2),
            (
                "compare_population",
                f"Which town has the larger population, {t} or {t2}?",
                t if T[t]["population"] > T[t2]["population"] else t2,
            ),
            (
                "count_employees",
                f"How many of the people in the passage work for {c}?",
                str(sum(d["employer"] == c for d in P.values())),
            ),
        ]
    elif difficulty == 3:
        employer = P[p]["employer"]
        hq_company = next((k for k, d in C.items() if d["town"] == t), c)
        options = [
            (
                "employer_hq_population",
                f"What is the population of the town where the company that {p} works for is headquartered?",
                str(T[C[employer]["town"]]["population"]),
            ),
            (
                "employer_ceo_age",
                f"How old is the chief executive of the company that {p} works for?",
                str(P[C[employer]["ceo"]]["age"]),
            ),
            (
                "employer_ceo_birthplace",
                f"In which town was the chief executive of the company that {p} works for born?",
                P[C[employer]["ceo"]]["born"],
            ),
            (
                "count_born_in_hq",
                f"How many of the people in the passage were born in the town where {hq_company} is headquartered?",
                str(sum(d["born"] == C[hq_company]["town"] for d in P.values())),
            ),
        ]
    else:
        raise ValueError(f"difficulty must be 1, 2 or 3, got {difficulty}")
    return rng.choice(options)


def generate_question(rng: random.Random, difficulty: int) -> dict:
    """One passage + question of ``difficulty`` (1-3) with its gold short answer."""
    world = make_world(rng)
    kind, question, answer = _question(world, rng, difficulty)
    return {
        "prompt": f"Passage: {passage(world, rng)}\nQuestion: {question}",
        "answer": answer,
        "answers": [answer],
        "solution": "",
        "difficulty": difficulty,
        "kind": kind,
    }


def prepare_qa(
    out: Path,
    *,
    n_train: int = 5000,
    n_validation: int = 250,
    n_test: int = 500,
    seed: int = 0,
    force: bool = False,
) -> Path:
    """Generate fictional-world QA (difficulty 1-3, drawn uniformly) into the text task ``out``.

    Args:
        out: the text-task directory to write
        n_train: questions in the train split
        n_validation: questions in the validation split
        n_test: questions in the test split
        seed: the same seed gives the same questions
        force: rebuild even if ``out`` holds a task built with other options, or other files

    Safe to re-run: a complete task built with the same options is kept; one built with
    other options is an error unless ``force``.
    """
    check_counts(n_train=n_train, n_validation=n_validation, n_test=n_test)
    info = {
        "generator": "qa",
        "seed": seed,
        "n": {"train": n_train, "validation": n_validation, "test": n_test},
    }
    out = Path(out)
    if check_out(out, info, force, text_task=True):
        return out
    rng = random.Random(seed)
    rows, seen = [], set()
    for split, n in (("train", n_train), ("validation", n_validation), ("test", n_test)):
        made = 0
        while made < n:
            example = generate_question(rng, rng.randint(1, 3))
            if example["prompt"] in seen:
                continue
            seen.add(example["prompt"])
            rows.append({"id": f"qa-{split}-{made:06d}", "source": "qa", "split": split, **example})
            made += 1
    return write_text_task(rows, out, name="qa", info=info)


def _squad_split(path: Path) -> str:
    stem = path.stem.lower()
    if "train" in stem:
        return "train"
    if "dev" in stem or "test" in stem:
        return "test"  # SQuAD's test set is hidden; its dev set is what everyone reports on
    return stem


def _squad_rows(path: Path) -> list[dict]:
    try:
        return _squad_records(json.loads(read_text(path))["data"], _squad_split(path))
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as err:
        # a missing key anywhere in data/paragraphs/qas is the file's fault, not a bug
        raise FlexispeechError(
            f"{path}: not a SQuAD json file (needs data/paragraphs/context/qas): {type(err).__name__} {err}"
        ) from None


def _squad_records(data: list[dict], split: str) -> list[dict]:
    rows = []
    for article in data:
        for paragraph in article.get("paragraphs", []):
            context = paragraph["context"]
            for qa in paragraph.get("qas", []):
                # v2 marks unanswerable questions; their gold answer is the empty string
                answers = [] if qa.get("is_impossible") else [a["text"] for a in qa.get("answers", [])]
                rows.append(
                    {
                        "id": f"squad-{qa['id']}",
                        "prompt": f"Passage: {context}\nQuestion: {qa['question'].strip()}",
                        "answer": answers[0] if answers else "",
                        "answers": answers,
                        "solution": "",
                        "difficulty": 0,  # SQuAD has no difficulty label; 0 = unlabelled
                        "source": "squad",
                        "split": split,
                    }
                )
    return rows


def prepare_squad(src: Path, out: Path, *, force: bool = False) -> Path:
    """Import SQuAD v1.1 / v2.0 json files from ``src`` (a directory or one file) into ``out``.

    Args:
        src: a directory of SQuAD *.json files, or one file; each file is one split, named
            by its stem: a stem with "train" -> train, with "dev" or "test" -> test (SQuAD's
            own test set is hidden), any other stem kept as the split's name
        out: the text-task directory to write
        force: rebuild even if ``out`` holds a task built from another source, or other files

    Safe to re-run: a task built from the same files (by content) is kept; one built from
    others is an error unless ``force``.

    Raises:
        FlexispeechError: ``src`` missing or without ``*.json`` files, a file not in SQuAD
            layout (named), or ``out`` holds other data (without ``force``).
    """
    src, out = Path(src), Path(out)
    if not src.exists():
        raise FlexispeechError(f"{src}: no such file or directory (expected SQuAD *.json files)")
    files = sorted(src.glob("*.json")) if src.is_dir() else [src]
    if not files:
        raise FlexispeechError(f"{src}: no *.json files (expected e.g. train-v2.0.json, dev-v2.0.json)")
    info = {"importer": "squad", "files": [f.name for f in files], "sha256": file_digests(files)}
    if check_out(out, info, force, text_task=True):
        return out
    rows = [row for path in files for row in _squad_rows(path)]
    return write_text_task(rows, out, name="squad", info=info)
