"""Arithmetic word problems with a known number of steps, and a GSM8K importer.

``prepare_math`` generates problems from a seeded generator: a starting quantity, then
1-6 operations (add, subtract, multiply, exact divide, percent up/down), each one sentence
and one line of the worked solution, so ``difficulty`` = number of steps is exact. Themes
(shopping, travel, sharing, rates, percentages) vary the wording; every intermediate value
and the answer are positive integers. ``prepare_gsm8k`` imports GSM8K jsonl files a user
already has (``question``, ``answer`` ending in ``#### N``).

Rows follow :mod:`flexispeech.data.text_format`; ``solution`` ends with a ``#### N`` line, as GSM8K's
does, so :func:`flexispeech.evaluation.text_metrics.extract_final_number` reads both the same way.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from data_prep.folder import check_counts, check_out, file_digests, read_text
from flexispeech.data.text_format import write_text_task
from flexispeech.errors import FlexispeechError
from flexispeech.evaluation.text_metrics import extract_final_number

MAX_VALUE = 10_000  # keeps numbers in the range a small LM has seen spelled out in text
PERCENTS = (10, 20, 25, 50, 75)

NAMES = (
    ("Mira", "she"),
    ("Tobin", "he"),
    ("Lena", "she"),
    ("Oskar", "he"),
    ("Priya", "she"),
    ("Dario", "he"),
    ("Yuki", "she"),
    ("Felix", "he"),
    ("Amara", "she"),
    ("Jonas", "he"),
    ("Noor", "she"),
    ("Emeka", "he"),
    ("Ines", "she"),
    ("Ravi", "he"),
    ("Sofia", "she"),
    ("Mateo", "he"),
)
ITEMS = ("a scarf", "a book", "some fruit", "a lamp", "a board game", "a pair of gloves", "paint")

# Per theme: the opening sentence, the question, and per operation a sentence template and
# a short label for the solution line. {x} is the operand, {p} a percent, {k} = x - 1.
THEMES: dict[str, dict] = {
    "shopping": {
        "start": "{name} has ${v} to spend at the market.",
        "question": "How many dollars does {name} have now?",
        "ops": {
            "add": ("{P} earns ${x} more by helping at a stall.", "earns {x}"),
            "sub": ("{P} buys {item} for ${x}.", "spends {x}"),
            "mul": ("Selling old games online makes {pos} money {x} times as much.", "{x} times as much"),
            "div": (
                "{P} splits {pos} money equally into {x} envelopes and keeps only one.",
                "one of {x} equal parts",
            ),
            "pct_down": ("{P} spends {p}% of {pos} money on {item}.", "spends {p}%"),
            "pct_up": ("{P} gets a bonus equal to {p}% of the money {pro} has.", "bonus of {p}%"),
        },
    },
    "travel": {
        "start": "{name} has {v} km left to drive on a road trip.",
        "question": "How many km does {name} have left to drive?",
        "ops": {
            "add": ("A closed road adds {x} km to the remaining distance.", "detour adds {x}"),
            "sub": ("{P} drives {x} km before lunch.", "drives {x}"),
            "mul": (
                "{P} misread the map: the real remaining distance is {x} times as long.",
                "{x} times as long",
            ),
            "div": (
                "{P} shares the remaining driving equally with {k} friends; count only {pos} share.",
                "one of {x} equal shares",
            ),
            "pct_down": ("{P} covers {p}% of the remaining distance before dinner.", "covers {p}%"),
            "pct_up": ("Roadworks make the remaining distance {p}% longer.", "{p}% longer"),
        },
    },
    "sharing": {
        "start": "{name} baked {v} cookies.",
        "question": "How many cookies does {name} have now?",
        "ops": {
            "add": ("A neighbour brings {x} more cookies.", "gets {x} more"),
            "sub": ("{P} gives {x} cookies to a friend.", "gives away {x}"),
            "mul": ("{P} bakes more batches until there are {x} times as many cookies.", "{x} times as many"),
            "div": (
                "{P} shares the cookies equally among {x} plates and keeps one plate.",
                "one of {x} equal plates",
            ),
            "pct_down": ("{p}% of the cookies are eaten at a party.", "{p}% eaten"),
            "pct_up": ("{P} bakes {p}% more cookies than {pro} has.", "{p}% more"),
        },
    },
    "rates": {
        "start": "A pump run by {name} moves {v} litres of water per minute.",
        "question": "How many litres per minute does {name}'s pump move now?",
        "ops": {
            "add": ("A second pump adds {x} litres per minute to the flow.", "adds {x}"),
            "sub": ("A valve diverts {x} litres per minute elsewhere.", "diverts {x}"),
            "mul": ("A bigger motor makes the flow {x} times as fast.", "{x} times as fast"),
            "div": ("The flow is split equally among {x} pipes; follow just one pipe.", "one of {x} pipes"),
            "pct_down": ("A leak cuts the flow by {p}%.", "{p}% lost"),
            "pct_up": ("Cleaning the filter raises the flow by {p}%.", "{p}% faster"),
        },
    },
    "percentages": {
        "start": "A jacket that {name} wants costs ${v}.",
        "question": "How many dollars does {name} pay for it in the end?",
        "ops": {
            "add": ("A delivery fee of ${x} is added.", "fee of {x}"),
            "sub": ("A coupon takes ${x} off.", "coupon of {x}"),
            "mul": ("{P} decides to buy {x} of them, paying for all at this price.", "{x} jackets"),
            "div": (
                "{P} and {k} friends split the cost equally; count only {pos} share.",
                "one of {x} shares",
            ),
            "pct_down": ("The price is cut by {p}% in a sale.", "{p}% off"),
            "pct_up": ("Then the price rises by {p}%.", "{p}% more"),
        },
    },
}
# The percentages theme should mostly exercise percentages: op weights per theme.
_DEFAULT_WEIGHTS = {"add": 3, "sub": 3, "mul": 2, "div": 2, "pct_down": 1, "pct_up": 1}
_WEIGHTS = {t: dict(_DEFAULT_WEIGHTS) for t in THEMES}
_WEIGHTS["percentages"].update(pct_down=4, pct_up=3)


@dataclass(frozen=True)
class Step:
    op: str  # key of THEMES[...]["ops"]
    operand: int  # the number in the sentence (percent for pct_*)
    before: int
    after: int


def _candidates(op: str, v: int, rng: random.Random) -> int | None:
    """A random operand for ``op`` that keeps the value a positive integer <= MAX_VALUE."""
    if op == "add":
        return rng.randint(2, 60) if v + 60 <= MAX_VALUE else None
    if op == "sub":
        return rng.randint(1, min(v - 1, 60)) if v >= 2 else None
    if op == "mul":
        xs = [x for x in range(2, 6) if v * x <= MAX_VALUE]
        return rng.choice(xs) if xs else None
    if op == "div":
        xs = [x for x in range(2, 13) if v % x == 0]
        return rng.choice(xs) if xs else None
    if op in ("pct_down", "pct_up"):
        ps = [p for p in PERCENTS if v * p % 100 == 0 and (op == "pct_down" or p <= 50)]
        if op == "pct_up":
            ps = [p for p in ps if v + v * p // 100 <= MAX_VALUE]
        return rng.choice(ps) if ps else None
    raise ValueError(op)


_APPLY: dict[str, Callable[[int, int], int]] = {
    "add": lambda v, x: v + x,
    "sub": lambda v, x: v - x,
    "mul": lambda v, x: v * x,
    "div": lambda v, x: v // x,
    "pct_down": lambda v, p: v - v * p // 100,
    "pct_up": lambda v, p: v + v * p // 100,
}


def _solution_line(step: Step, label: str) -> str:
    v, x, out = step.before, step.operand, step.after
    arithmetic = {
        "add": f"{v} + {x} = {out}",
        "sub": f"{v} - {x} = {out}",
        "mul": f"{v} * {x} = {out}",
        "div": f"{v} / {x} = {out}",
        "pct_down": f"{v} - {v} * {x} / 100 = {v} - {v * x // 100} = {out}",
        "pct_up": f"{v} + {v} * {x} / 100 = {v} + {v * x // 100} = {out}",
    }[step.op]
    return f"{label[0].upper()}{label[1:]}: {arithmetic}"


def generate_problem(rng: random.Random, n_steps: int) -> dict:
    """One word problem with exactly ``n_steps`` operations.

    Returns:
        dict with ``prompt`` (the problem), ``solution`` (one line per step, then ``#### N``),
        ``answer`` (the integer as a string), ``difficulty`` (= n_steps) and ``theme``.
    """
    theme_name = rng.choice(sorted(THEMES))
    theme = THEMES[theme_name]
    name, pro = rng.choice(NAMES)
    fill = {"name": name, "pro": pro, "P": pro.capitalize(), "pos": "his" if pro == "he" else "her"}
    v = rng.randint(2, 40) * rng.choice((2, 4, 5, 10))  # start with many divisors
    sentences = [theme["start"].format(v=v, **fill)]
    lines = []
    weights = _WEIGHTS[theme_name]
    previous = None
    for _ in range(n_steps):
        # never the same operation twice in a row: it reads as a copy-paste, not a story
        ops = [o for o in weights if o != previous]
        while True:  # "add" is always possible below MAX_VALUE - 60, "sub" above 1
            op = rng.choices(ops, weights=[weights[o] for o in ops])[0]
            x = _candidates(op, v, rng)
            if x is not None:
                break
        step = Step(op, x, v, _APPLY[op](v, x))
        sentence, label = theme["ops"][op]
        values = {"x": x, "p": x, "k": x - 1, "item": rng.choice(ITEMS), **fill}
        sentences.append(sentence.format(**values))
        lines.append(_solution_line(step, label.format(**values)))
        v, previous = step.after, op
    sentences.append(theme["question"].format(**fill))
    return {
        "prompt": " ".join(sentences),
        "solution": "\n".join(lines + [f"#### {v}"]),
        "answer": str(v),
        "difficulty": n_steps,
        "theme": theme_name,
    }


def prepare_math(
    out: Path,
    *,
    n_train: int = 5000,
    n_validation: int = 250,
    n_test: int = 500,
    seed: int = 0,
    max_steps: int = 6,
    force: bool = False,
) -> Path:
    """Generate arithmetic word problems with 1..``max_steps`` steps into the text task ``out``.

    Args:
        out: the text-task directory to write
        n_train: problems in the train split
        n_validation: problems in the validation split
        n_test: problems in the test split
        seed: the same seed gives the same problems
        max_steps: the most operations in one problem (difficulty = steps, drawn uniformly
            from 1..max_steps)
        force: rebuild even if ``out`` holds a task built with other options, or other files

    Difficulties are drawn uniformly; no prompt appears twice (so none is in two splits).
    Safe to re-run: a complete task built with the same options is kept; one built with
    other options is an error unless ``force``.

    Returns:
        ``out``.
    """
    if max_steps < 1:
        raise FlexispeechError(f"max_steps must be >= 1, got {max_steps}")
    check_counts(n_train=n_train, n_validation=n_validation, n_test=n_test)
    info = {
        "generator": "math",
        "seed": seed,
        "max_steps": max_steps,
        "n": {"train": n_train, "validation": n_validation, "test": n_test},
    }
    out = Path(out)
    if check_out(out, info, force, text_task=True):
        return out
    rng = random.Random(seed)
    seen: set[str] = set()
    rows = []
    for split, n in (("train", n_train), ("validation", n_validation), ("test", n_test)):
        made = 0
        while made < n:
            problem = generate_problem(rng, rng.randint(1, max_steps))
            if problem["prompt"] in seen:
                continue
            seen.add(problem["prompt"])
            rows.append({"id": f"math-{split}-{made:06d}", "source": "math", "split": split, **problem})
            made += 1
    return write_text_task(rows, out, name="math", info=info)


_GSM8K_SPLITS = {
    "train": "train",
    "test": "test",
    "dev": "validation",
    "val": "validation",
    "valid": "validation",
    "validation": "validation",
}


def _gsm8k_rows(path: Path, split: str) -> list[dict]:
    rows = []
    for lineno, line in enumerate(read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            question, answer_text = record["question"], record["answer"]
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise FlexispeechError(
                f"{path}:{lineno}: not a GSM8K record (needs 'question' and 'answer'): {err}"
            ) from None
        if "####" not in answer_text:
            raise FlexispeechError(f"{path}:{lineno}: answer has no '#### N' final-answer line")
        final = extract_final_number(answer_text)
        if final is None:
            raise FlexispeechError(f"{path}:{lineno}: no number after '####' in the answer")
        steps = [ln for ln in answer_text.split("####")[0].splitlines() if ln.strip()]
        rows.append(
            {
                "id": f"gsm8k-{path.stem}-{len(rows):06d}",  # by file: two files may share a split
                "prompt": question.strip(),
                "answer": final,
                "solution": answer_text.strip(),
                "difficulty": max(1, len(steps)),  # GSM8K puts one reasoning step per line
                "source": "gsm8k",
                "split": split,
            }
        )
    return rows


def prepare_gsm8k(src: Path, out: Path, *, force: bool = False) -> Path:
    """Import GSM8K jsonl files (``train.jsonl``, ``test.jsonl``) from ``src`` into ``out``.

    Args:
        src: a directory of GSM8K *.jsonl files, or one file; each file is one split,
            named by its stem (train.jsonl -> train, test.jsonl -> test, dev/val ->
            validation, any other stem kept as the split's name)
        out: the text-task directory to write
        force: rebuild even if ``out`` holds a task built from another source, or other files

    ``difficulty`` is the number of non-empty solution lines before ``####``.
    Safe to re-run: a task built from the same files (by content) is kept; one built from
    others is an error unless ``force``.

    Raises:
        FlexispeechError: ``src`` missing or holding no jsonl file, a malformed record
            (named by file and line), or ``out`` holds other data (without ``force``).
    """
    src, out = Path(src), Path(out)
    if not src.exists():
        raise FlexispeechError(f"{src}: no such file or directory (expected GSM8K *.jsonl files)")
    files = sorted(src.glob("*.jsonl")) if src.is_dir() else [src]
    if not files:
        raise FlexispeechError(f"{src}: no *.jsonl files (expected GSM8K train.jsonl / test.jsonl)")
    info = {"importer": "gsm8k", "files": [f.name for f in files], "sha256": file_digests(files)}
    if check_out(out, info, force, text_task=True):
        return out
    rows = []
    for path in files:
        rows += _gsm8k_rows(path, _GSM8K_SPLITS.get(path.stem.lower(), path.stem))
    return write_text_task(rows, out, name="gsm8k", info=info)
