"""Pick one transcript among several ranks' by the likelihood they give it together.

An adapter trained on one domain can be confidently wrong on another: on real recordings
an adapter trained on synthetic voices turns "to lock" into "too luck", a transcript the
base model (rank 0) finds unlikely. Each rank of a nested adapter is a model of its own,
so every candidate transcript (one greedy decoding per rank of the pool) can be scored by
every rank of the pool, teacher-forced, and the candidate with the highest summed
log-probability served: a product of experts over the pool's ranks, restricted to their
own hypotheses. With the base model (rank 0) beside the routed rank r it keeps a veto: the adapted transcript
wins where the base model finds it about as likely as its own (the adapter's domain, where
it also finds the base model's transcript unlikely), the base model's where the adapter's
transcript is one only the adapter believes.

This is N-best rescoring with a model ensemble (as system combination rescores with
several models), with candidates and scorers from one set of weights. It costs one
decoding per rank of the pool and one teacher-forced decoder pass per rank for the rows
whose candidates differ (Whisper's scoring passes take the encoder outputs the decodings
made: ``models.encoder_reuse``), so, like the consensus (``evaluation.consensus``), it is
an accuracy option, not a serving default.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from flexispeech.evaluation.fallback import batch_rows, decode_other_ranks
from flexispeech.lora.ranks import use_ranks

ScoreRows = Callable[[list[int], int, list[list[str]]], torch.Tensor]
"""``score_rows(rows, rank, candidates)`` -> [C, len(rows)]: the summed log-probability the
model at ``rank`` gives candidate c of each row (``candidates[c][j]`` is row ``rows[j]``'s);
NaN where a row cannot be scored."""


def row_scorer(model: torch.nn.Module, family: Any, processor: Any, inputs: dict[str, Any]) -> ScoreRows:
    """``score_rows`` for ``decode_joint`` on one collated decoding batch ``inputs``:
    candidates are tokenised as training labels (``family.labels``) and scored with
    ``family.label_logprob`` at one rank for every row."""
    rows_of = batch_rows(inputs)

    def score_rows(rows: list[int], rank: int, candidates: list[list[str]]) -> torch.Tensor:
        labels = [family.labels(processor, texts) for texts in candidates]
        with torch.no_grad(), use_ranks(model, torch.full((len(rows),), rank, dtype=torch.long)):
            return family.label_logprob(model, rows_of(rows), labels)

    return score_rows


def joint_pick(scores: torch.Tensor) -> int:
    """Index of the candidate with the highest summed score; ``scores`` [C, K] (candidate c
    scored by pool rank k). Ties go to the earliest candidate (the lowest rank's). A
    candidate with a NaN score is never picked; if every candidate has one, the first is."""
    total = scores.sum(dim=1)
    best, pick = float("-inf"), 0
    for c, value in enumerate(total.tolist()):
        if value == value and value > best:  # NaN != NaN: a row that could not be scored
            best, pick = value, c
    return pick


def decode_joint(
    texts: list[str],
    ranks: Sequence[int | None],
    pool: Sequence[int],
    decode_rows: Callable[[list[int], torch.Tensor], list[str]],
    score_rows: ScoreRows,
    normalize: Callable[[str], str] | None = None,
    weights: Mapping[int, float] | None = None,
) -> tuple[list[str], list[int | None], list[dict[str, Any]]]:
    """Serve one decoded batch by the joint likelihood of ``pool`` and each row's routed rank.

    Rows the router sent to an adapter rank (> 0) are decoded at every rank of ``pool``
    they were not routed to; where the hypotheses of a row's ranks (the pool and its routed
    rank) differ after ``normalize``, each is scored at every one of those ranks and the one
    with the highest summed log-probability is served (``joint_pick``). ``pool = [0]`` is the
    joint pick of the routed rank and the base model. Rows at rank 0 or without a rank (a
    gate's "leave the base model alone") keep theirs, as do rows whose ranks all agree.

    Args:
        texts: the batch's routed hypotheses, one per row.
        ranks: each row's routed rank (None: no adapter).
        pool: the ranks that decode and score beside the routed one, e.g. ``[0]``.
        decode_rows: as ``fallback.row_decoder`` makes it.
        score_rows: as ``row_scorer`` makes it.
        normalize: applied to hypotheses before they are compared for agreement.
        weights: a weight per scoring rank (1 where not named) on its log-probabilities in
            the sum, e.g. ``{0: 0.25}``: the base model's vote at a quarter of the adapter's.
            The notes keep the scores unweighted.

    Returns:
        The hypotheses, each row's rank after the pick (the rank whose hypothesis it is),
        and one note per row (``{}`` for rows left alone; else each of its ranks'
        hypotheses, the score matrix ``scores[candidate rank][scoring rank]`` when scored,
        the pick, and the routed rank's hypothesis).
    """
    if not pool or min(pool) < 0:
        raise ValueError(f"a joint pick needs one or more ranks >= 0, got {list(pool)}")
    weights = dict(weights or {})
    if any(not 0 <= w < float("inf") for w in weights.values()):
        raise ValueError(f"joint-pick weights must be finite and >= 0, got {weights}")
    rows = [i for i, r in enumerate(ranks) if r]
    own = {i: sorted(set(pool) | {ranks[i]}) for i in rows}  # type: ignore[arg-type]
    out, picked = list(texts), list(ranks)
    notes: list[dict[str, Any]] = [{} for _ in texts]
    hyps = decode_other_ranks(texts, ranks, own, decode_rows)

    def key(text: str) -> str:
        return normalize(text) if normalize else text

    # Rows whose ranks disagree, grouped by their ranks (rows routed to different ranks have
    # different candidates): one scoring pass per rank and group.
    groups: dict[tuple[int, ...], list[int]] = {}
    for i in rows:
        if len({key(h) for h in hyps[i].values()}) > 1:
            groups.setdefault(tuple(own[i]), []).append(i)
    scores: dict[int, torch.Tensor] = {}
    for ks, group in groups.items():
        candidates = [[hyps[i][c] for i in group] for c in ks]
        by_rank = torch.stack([score_rows(group, k, candidates) for k in ks], dim=-1)  # [C, R, K]
        scores |= {i: by_rank[:, j, :] for j, i in enumerate(group)}
    for i in rows:
        ks = own[i]
        if i in scores:
            scale = torch.tensor([weights.get(k, 1.0) for k in ks], dtype=scores[i].dtype)
            # a rank at weight 0 has no vote, even where its score is -inf (0 * -inf is NaN)
            pick = ks[joint_pick(torch.where(scale == 0, 0.0, scores[i] * scale))]
        else:
            pick = ranks[i]
        out[i], picked[i] = hyps[i][pick], pick  # type: ignore[index]
        note: dict[str, Any] = {
            "hyps": {str(k): hyps[i][k] for k in ks},
            "picked": pick,
            "routed_rank": ranks[i],
            "routed_hyp": texts[i],
        }
        if i in scores:
            note["scores"] = {
                str(c): {str(k): round(float(scores[i][a, b]), 4) for b, k in enumerate(ks)}
                for a, c in enumerate(ks)
            }
        notes[i] = note
    return out, picked, notes
