"""Pick one transcript among several of the same audio by agreement (minimum Bayes risk).

A nested adapter decodes an utterance at every rank for the price of one training run;
where the ranks disagree, the hypothesis closest to all the others (least total word edit
distance) is the consensus. This is MBR selection with a uniform weight per hypothesis and
word errors as the loss, the rule ROVER-style system combination approximates; it costs one
decoding per rank, so it is an accuracy option, not a serving default.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from flexispeech.evaluation.fallback import decode_other_ranks


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
    totals = [0] * len(words)
    for i in range(len(words)):
        for j in range(i + 1, len(words)):  # the distance is symmetric: each pair once
            d = word_distance(words[i], words[j])
            totals[i] += d
            totals[j] += d
    return min(range(len(words)), key=lambda i: (totals[i], i))


def decode_consensus(
    texts: list[str],
    ranks: Sequence[int | None],
    pool: Sequence[int],
    decode_rows: Callable[[list[int], torch.Tensor], list[str]],
    normalize: Callable[[str], str] | None = None,
) -> tuple[list[str], list[int | None], list[dict[str, Any]]]:
    """Serve one decoded batch by the consensus of the ranks ``pool``.

    Rows the router sent to an adapter rank (> 0) are decoded at every rank of ``pool``
    (the routed rank's hypothesis is reused when it is in the pool; the others in one
    batched call with per-row ranks) and get the consensus hypothesis; rows at rank 0 or
    without a rank (a gate's "leave the base model alone") keep theirs.

    Args:
        texts: the batch's routed hypotheses, one per row.
        ranks: each row's routed rank (None: no adapter).
        pool: the ranks to decode and pick among, lowest first (ties go to the lower rank).
        decode_rows: ``decode_rows(rows, ranks)`` decodes rows ``rows`` of the batch (a row
            may repeat) at per-row ``ranks`` [len(rows)] (int64), as ``fallback.row_decoder``.
        normalize: applied to hypotheses before they are compared (the scorer's normaliser).

    Returns:
        The hypotheses, each row's rank after the consensus (the picked one), and one note
        per row (``{}`` when it kept its routed hypothesis; else every pool rank's hypothesis,
        the pick, and the routed rank's hypothesis).
    """
    pool = sorted(set(pool))
    rows = [i for i, r in enumerate(ranks) if r]
    out, picked = list(texts), list(ranks)
    notes: list[dict[str, Any]] = [{} for _ in texts]
    hyps = decode_other_ranks(texts, ranks, dict.fromkeys(rows, pool), decode_rows)
    for i in rows:
        pick = pool[consensus_index([hyps[i][k] for k in pool], normalize)]
        out[i], picked[i] = hyps[i][pick], pick
        notes[i] = {
            "hyps": {str(k): hyps[i][k] for k in pool},
            "picked": pick,
            "routed_rank": ranks[i],
            "routed_hyp": texts[i],
        }
    return out, picked, notes
