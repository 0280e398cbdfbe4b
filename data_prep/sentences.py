"""English sentences with exact transcripts for the synthetic corpus.

Two sources: Debian's ``fortunes`` / ``fortunes-min`` files, kept only when every word is
in the ``wamerican`` dictionary (so the TTS engines pronounce them as written), and
sentences generated from templates with numbers, dates, times, money, names and commands
(so text normalisation matters when scoring). Each sentence goes to one split by a hash
of its text, so no sentence is in two splits whatever the seed.
"""

from __future__ import annotations

import hashlib
import re
import warnings
from pathlib import Path

import numpy as np

from data_prep.system_root import system_path

# Debian package locations (fortunes, fortunes-min, wamerican), under FLEXISPEECH_SYSTEM_ROOT.
FORTUNE_DIR = "/usr/share/games/fortunes"
DICTIONARY = "/usr/share/dict/words"
SPLIT_FRACTIONS = {"train": 0.8, "validation": 0.1, "test": 0.1}
# Word-count buckets of an utterance (1-30 s of read speech at ~2.5 words/s).
BUCKETS = ((1, 4), (5, 12), (13, 25), (26, 45), (46, 70))

_ALLOWED = re.compile(r"^[A-Za-z][A-Za-z ,.;:!?'-]*$")
_WORD = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)?")

FIRST_NAMES = [
    "Alice",
    "Ben",
    "Carlos",
    "Diana",
    "Emma",
    "Farid",
    "Grace",
    "Hiro",
    "Ines",
    "James",
    "Kate",
    "Liam",
    "Maria",
    "Noah",
    "Olivia",
    "Priya",
    "Sam",
    "Yuki",
]
LAST_NAMES = [
    "Smith",
    "Garcia",
    "Chen",
    "Okafor",
    "Miller",
    "Novak",
    "Patel",
    "Johnson",
    "Brown",
    "Kim",
    "Lopez",
    "Walker",
]
MONTHS = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
CITIES = ["Boston", "Denver", "London", "Paris", "Tokyo", "Berlin", "Chicago", "Dublin"]
ITEMS = ["apples", "tickets", "boxes", "chairs", "books", "bottles", "cables", "lamps"]
APPS = ["the lights", "the music", "the heating", "the alarm", "the radio", "the fan"]


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _templates(rng: np.random.Generator) -> str:
    """One generated sentence; numbers/dates/times/money are written as digits."""
    name = f"{rng.choice(FIRST_NAMES)} {rng.choice(LAST_NAMES)}"
    first = str(rng.choice(FIRST_NAMES))
    n = int(rng.integers(2, 999))
    big = int(rng.integers(1000, 99999))
    month, day, year = str(rng.choice(MONTHS)), int(rng.integers(1, 29)), int(rng.integers(1950, 2031))
    hour, minute = int(rng.integers(1, 13)), int(rng.choice([0, 5, 15, 20, 30, 45]))
    time = f"{hour}:{minute:02d} {rng.choice(['am', 'pm'])}" if minute else f"{hour} o'clock"
    price = f"${int(rng.integers(1, 500))}.{int(rng.integers(0, 100)):02d}"
    city, item, app = str(rng.choice(CITIES)), str(rng.choice(ITEMS)), str(rng.choice(APPS))
    options = [
        f"{name} was born on {month} {_ordinal(day)}, {year}.",
        f"Please call {first} at {time} on {rng.choice(DAYS)}.",
        f"The train to {city} leaves at {time} from platform {int(rng.integers(1, 20))}.",
        f"We ordered {n} {item} for {price} each.",
        f"Turn off {app} in {int(rng.integers(2, 60))} minutes.",
        f"Set a timer for {int(rng.integers(2, 90))} minutes and {int(rng.integers(1, 59))} seconds.",
        f"The population of the town grew to {big:,} by {year}.",
        f"{first} scored {int(rng.integers(50, 100))} percent on the test.",
        f"Add {n} and {int(rng.integers(2, 999))}, then divide the result by {int(rng.integers(2, 12))}.",
        f"Remind me to send {first} the report on {month} {_ordinal(day)}.",
        f"The meeting with {name} moved to {rng.choice(DAYS)} at {time}.",
        f"Room {int(rng.integers(100, 999))} is on the {_ordinal(int(rng.integers(1, 30)))} floor.",
        f"It cost {price} to ship {n} {item} to {city}.",
        f"Call {int(rng.integers(200, 999))} {int(rng.integers(100, 999))} {int(rng.integers(1000, 9999))} and ask for {first}.",
        f"Play the next song and turn the volume up to {int(rng.integers(1, 11))}.",
        f"In {year} the company sold {big:,} {item} in {city}.",
    ]
    return str(options[int(rng.integers(len(options)))])


def generated_sentences(count: int, seed: int = 0) -> list[str]:
    """``count`` distinct generated sentences (a fixed function of ``seed``)."""
    rng = np.random.default_rng([seed, 7])
    out: dict[str, None] = {}
    for _ in range(count * 20):
        out.setdefault(_templates(rng), None)
        if len(out) >= count:
            break
    return list(out)


def fortune_sentences(fortune_dir: Path | None = None, dictionary: Path | None = None) -> list[str]:
    """Fortunes whose every word is a dictionary word (sorted, de-duplicated); [] if missing.

    ``fortune_dir`` and ``dictionary`` default to the Debian packages' files under
    :func:`~data_prep.system_root.system_root`.
    """
    fortune_dir = Path(fortune_dir) if fortune_dir is not None else system_path(FORTUNE_DIR)
    dictionary = Path(dictionary) if dictionary is not None else system_path(DICTIONARY)
    if not dictionary.is_file() or not fortune_dir.is_dir():
        warnings.warn(
            f"{fortune_dir} or {dictionary} missing (Debian packages fortunes, wamerican): "
            "using generated sentences only",
            stacklevel=2,
        )
        return []
    words = {w.strip().lower() for w in dictionary.read_text(errors="ignore").splitlines()}
    found: set[str] = set()
    for path in sorted(fortune_dir.iterdir()):
        if path.suffix or not path.is_file() or path.name.startswith("."):
            continue  # skip the .dat indexes and .u8 links
        for entry in path.read_text(errors="ignore").split("\n%\n"):
            text = " ".join(entry.split())
            if not text or "--" in text or not _ALLOWED.match(text):
                continue
            tokens = _WORD.findall(text)
            if 1 <= len(tokens) <= 70 and all(t.lower() in words for t in tokens):
                found.add(text)
    return sorted(found)


def split_of(text: str) -> str:
    """The split of a sentence: a hash of its text, so it never depends on the seed."""
    h = int.from_bytes(hashlib.sha1(text.encode()).digest()[:8], "big") / 2.0**64
    edge = 0.0
    for split, fraction in SPLIT_FRACTIONS.items():
        edge += fraction
        if h < edge:
            return split
    return "test"


def n_words(text: str) -> int:
    return len(text.split())


def sentence_pools(seed: int = 0, n_generated: int = 3000) -> dict[str, list[str]]:
    """Sentences per split: fortunes plus generated ones, each in exactly one split."""
    pools: dict[str, list[str]] = {s: [] for s in SPLIT_FRACTIONS}
    for text in fortune_sentences() + generated_sentences(n_generated, seed):
        pools[split_of(text)].append(text)
    return pools


# compose's candidate lists per (pool, bucket). A corpus plan composes tens of thousands of
# texts from the same few pools, and filtering a whole pool by word count on every call
# was most of a 28,000-utterance plan's time (189 s of it); the lists, and the draws made
# from them, are the same, so the corpus stays the same bit for bit.
_CANDIDATES: dict[tuple[int, int, int], tuple[list[str], int, list[str], list[str]]] = {}


def _candidates(pool: list[str], lo: int, hi: int) -> tuple[list[str], list[str]]:
    """The sentences of ``pool`` with ``lo``..``hi`` words, and those with fewer than ``lo``
    (all of ``pool`` when none is shorter); cached while ``pool`` is the same list of the
    same length (the entry holds the list, so its id is not reused while cached)."""
    key = (id(pool), lo, hi)
    hit = _CANDIDATES.get(key)
    if hit is None or hit[0] is not pool or hit[1] != len(pool):
        counts = [n_words(s) for s in pool]
        fitting = [s for s, n in zip(pool, counts) if lo <= n <= hi]
        shorter = [s for s, n in zip(pool, counts) if n < lo] or pool
        hit = (pool, len(pool), fitting, shorter)
        if len(_CANDIDATES) >= 256:  # a plan uses a few pools x buckets; older plans' entries go
            _CANDIDATES.clear()
        _CANDIDATES[key] = hit
    return hit[2], hit[3]


def compose(pool: list[str], bucket: tuple[int, int], rng: np.random.Generator) -> str:
    """A text of ``bucket`` words (min, max): one sentence, or several joined if short."""
    lo, hi = bucket
    fitting, shorter = _candidates(pool, lo, hi)
    if fitting:
        return fitting[int(rng.integers(len(fitting)))]
    parts: list[str] = []
    while sum(map(n_words, parts)) < lo:
        candidate = shorter[int(rng.integers(len(shorter)))]
        if parts and sum(map(n_words, parts)) + n_words(candidate) > hi:
            break
        parts.append(candidate)
    return " ".join(parts)
