"""Pick one transcript among several of the same audio by agreement (minimum Bayes risk).

A nested adapter decodes an utterance at every rank for the price of one training run;
where the ranks disagree, the hypothesis closest to all the others (least total word edit
distance) is the consensus. This is MBR selection with a uniform weight per hypothesis and
word errors as the loss, the rule ROVER-style system combination approximates; it costs one
decoding per rank, so it is an accuracy option, not a serving default.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence


def word_distance(a: str, b: str) -> int:
    """Word-level Levenshtein distance between two (already normalised) transcripts."""
    import jiwer

    wa, wb = a.split(), b.split()
    if not wa or not wb:  # jiwer refuses an empty reference; the distance is the other's length
        return len(wa) + len(wb)
    out = jiwer.process_words(a, b)
    return out.substitutions + out.deletions + out.insertions


def consensus_index(hyps: Sequence[str], normalize: Callable[[str], str] | None = None) -> int:
    """Index of the hypothesis with the least total word distance to the others.

    Ties go to the earliest hypothesis, so with hypotheses listed from the lowest rank up the
    cheaper rank wins a tie. One hypothesis is its own consensus.
    """
    if not hyps:
        raise ValueError("consensus needs at least one hypothesis")
    words = [normalize(h) if normalize else h for h in hyps]
    totals = [sum(word_distance(w, v) for j, v in enumerate(words) if j != i) for i, w in enumerate(words)]
    return min(range(len(words)), key=lambda i: (totals[i], i))
