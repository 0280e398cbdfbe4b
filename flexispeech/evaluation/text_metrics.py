"""Scoring for text tasks: final-number extraction (math) and SQuAD-style answer matching.

``normalize_answer``, ``exact_match`` and ``token_f1`` follow the official SQuAD v1.1
evaluation script (lower-case, strip punctuation and the articles a/an/the, collapse
whitespace; F1 over the bag of tokens). They are re-implemented here in a few lines rather
than pulling in the ``evaluate`` package, which downloads its metric scripts from a hub.
"""

from __future__ import annotations

import collections
import re
import string
from collections.abc import Sequence

# A number as written in prose: optional sign (not glued to a preceding word, so the "-"
# of "3-4" is a hyphen, not a minus), optional currency sign, thousands groups or plain
# digits, optional decimals. "1,2,3" is three numbers, not 123: groups need 3 digits.
NUMBER_RE = re.compile(
    r"(?:(?<![\w.])(?P<sign>[-\u2212]))?\s?\$?\s?"
    r"(?P<num>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)"
)
# Markers after which the final answer is stated, most explicit first, and which
# occurrence counts: GSM8K's "#### N" line ends a solution, so the first one is the answer
# (anything after it is not part of the solution); "the answer is" may be restated, the
# last statement counts.
_ANSWER_MARKERS = ((re.compile(r"####"), 0), (re.compile(r"answer\s+is\b", re.IGNORECASE), -1))


def canonical_number(sign: str, digits: str) -> str:
    """``"-", "1,234.50"`` -> ``"-1234.5"``: no separators, no trailing decimal zeros."""
    digits = digits.replace(",", "")
    if digits.startswith("."):
        digits = "0" + digits
    if "." in digits:
        digits = digits.rstrip("0").rstrip(".")
    digits = digits.lstrip("0") or "0"
    if digits.startswith("."):
        digits = "0" + digits
    return digits if digits == "0" or not sign else "-" + digits


def find_numbers(text: str) -> list[str]:
    """Every number in ``text``, canonicalised (see :func:`canonical_number`), in order."""
    return [canonical_number(m.group("sign") or "", m.group("num")) for m in NUMBER_RE.finditer(text)]


def extract_final_number(text: str) -> str | None:
    """The final numeric answer stated in ``text``, canonicalised, or None if it has no number.

    Looks, in order, for the first number after the first ``####`` (GSM8K's answer line,
    which ends a solution), then after the last "answer is", then
    falls back to the last number in the text. ``"#### 1,234"`` -> ``"1234"``,
    ``"#### 8\nuser: ... #### 4"`` -> ``"8"``, ``"The answer is $12.50."`` -> ``"12.5"``,
    ``"it drops to -7"`` -> ``"-7"``.
    """
    for marker, which in _ANSWER_MARKERS:
        hits = list(marker.finditer(text))
        if hits:
            numbers = find_numbers(text[hits[which].end() :])
            if numbers:
                return numbers[0]
    numbers = find_numbers(text)
    return numbers[-1] if numbers else None


def numeric_match(prediction: str, gold: str) -> bool:
    """Whether the final number of ``prediction`` equals the number in ``gold`` (canonical)."""
    pred = extract_final_number(prediction)
    want = extract_final_number(gold)
    return pred is not None and pred == want


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lower-case, drop punctuation and articles, collapse whitespace."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def _golds(gold: str | Sequence[str]) -> list[str]:
    return [gold] if isinstance(gold, str) else list(gold) or [""]


def exact_match(prediction: str, gold: str | Sequence[str]) -> float:
    """1.0 if ``prediction`` equals any gold answer after :func:`normalize_answer`, else 0.0."""
    pred = normalize_answer(prediction)
    return float(any(pred == normalize_answer(g) for g in _golds(gold)))


def _f1(pred_tokens: list[str], gold_tokens: list[str]) -> float:
    # SQuAD v2 convention: an empty gold (unanswerable) scores 1 only for an empty prediction.
    if not pred_tokens or not gold_tokens:
        return float(pred_tokens == gold_tokens)
    common = collections.Counter(pred_tokens) & collections.Counter(gold_tokens)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision = same / len(pred_tokens)
    recall = same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def token_f1(prediction: str, gold: str | Sequence[str]) -> float:
    """SQuAD token F1 of ``prediction`` against the best-matching gold answer."""
    pred_tokens = normalize_answer(prediction).split()
    return max(_f1(pred_tokens, normalize_answer(g).split()) for g in _golds(gold))
