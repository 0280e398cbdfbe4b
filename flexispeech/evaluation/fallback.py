"""Decode a looping hypothesis again at another rank.

Whisper's worst errors are loops: greedy decoding repeats a phrase until the token budget
runs out, and one such utterance costs as many word errors as a hundred ordinary ones.
openai-whisper and faster-whisper catch them with the gzip compression ratio of the text
(``compression_ratio_threshold``, 2.4 by default) and decode again at a higher temperature.
A nested-rank adapter has a cheaper second opinion: the same weights at another rank (rank
0 is the base model, which a static adapter has too). Only the flagged rows are decoded
again, so the extra cost is the share of loops (about 0.5 % of the synthetic corpus).

The compression ratio is computed as openai-whisper computes it (``zlib`` on the UTF-8
text); it is one line, so it is written here rather than depending on that package.
"""

from __future__ import annotations

import contextlib
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from flexispeech.lora.ranks import use_ranks

# openai-whisper's and faster-whisper's default ``compression_ratio_threshold``.
DEFAULT_THRESHOLD = 2.4


@dataclass(frozen=True)
class Fallback:
    """Rows whose hypothesis compresses by more than ``threshold`` are decoded again at ``rank``."""

    rank: int
    threshold: float = DEFAULT_THRESHOLD

    def __post_init__(self) -> None:
        if self.rank < 0:
            raise ValueError(f"fallback rank must be >= 0, got {self.rank}")
        if not self.threshold > 0:
            raise ValueError(f"compression-ratio threshold must be > 0, got {self.threshold}")


def compression_ratio(text: str) -> float:
    """Bytes of ``text`` over bytes of its zlib compression (0 for empty text); loops score high."""
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


def flagged_rows(texts: Sequence[str], ranks: Sequence[int | None], fallback: Fallback) -> list[int]:
    """Indices of the hypotheses to decode again: over the threshold and not already at the
    fallback rank (a row without a rank, decoded outside any adapter, has nothing to fall back to)."""
    return [
        i
        for i, (text, rank) in enumerate(zip(texts, ranks, strict=True))
        if rank is not None and rank != fallback.rank and compression_ratio(text) > fallback.threshold
    ]


def keep_better(first: str, second: str) -> bool:
    """True when the fallback hypothesis ``second`` replaces ``first``: it loops less (a lower
    compression ratio). Equal ratios keep the routed rank's hypothesis."""
    return compression_ratio(second) < compression_ratio(first)


def batch_rows(inputs: dict[str, Any]) -> Callable[[list[int]], dict[str, Any]]:
    """``rows_of(rows)``: the rows ``rows`` of one collated batch ``inputs`` (a row may
    repeat), every tensor whose first dimension is the batch cut to them, the rest as is."""
    n = next(v.shape[0] for v in inputs.values() if isinstance(v, torch.Tensor) and v.dim())

    def rows_of(rows: list[int]) -> dict[str, Any]:
        index = torch.tensor(rows)
        return {
            k: v[index.to(v.device)] if isinstance(v, torch.Tensor) and v.dim() and v.shape[0] == n else v
            for k, v in inputs.items()
        }

    return rows_of


def second_passes(
    model: torch.nn.Module, family: Any, wanted: bool
) -> contextlib.AbstractContextManager[Any]:
    """The block one batch's decodings run in when it has second ones (``wanted``: the
    consensus, the joint pick, the loop fallback): the family's ``reuse_encoder``, so no clip
    runs the encoder twice at one rank; nothing when not wanted or the family keeps nothing."""
    reuse = getattr(family, "reuse_encoder", None)
    return reuse(model) if wanted and reuse is not None else contextlib.nullcontext()


def row_decoder(
    model: torch.nn.Module,
    family: Any,
    processor: Any,
    inputs: dict[str, Any],
    num_beams: int = 1,
    max_new_tokens: int | None = None,
) -> Callable[[list[int], torch.Tensor], list[str]]:
    """``decode_rows(rows, ranks)`` for ``decode_with_fallback``: greedy (or beam) decoding
    of the rows ``rows`` of one collated batch ``inputs`` (``batch_rows``) at per-row
    ``ranks`` [len(rows)]."""
    rows_of = batch_rows(inputs)

    def decode_rows(rows: list[int], ranks: torch.Tensor) -> list[str]:
        with torch.no_grad(), use_ranks(model, ranks):
            return family.generate(
                model, processor, rows_of(rows), num_beams=num_beams, max_new_tokens=max_new_tokens
            )

    return decode_rows


def decode_other_ranks(
    texts: Sequence[str],
    ranks: Sequence[int | None],
    wanted: dict[int, Sequence[int]],
    decode_rows: Callable[[list[int], torch.Tensor], list[str]],
) -> dict[int, dict[int, str]]:
    """Each row's hypotheses at the ranks ``wanted[row]``, its routed hypothesis ``texts[row]``
    reused at its routed rank ``ranks[row]`` and every other (row, rank) decoded in one
    ``decode_rows`` call (the consensus' and the joint pick's second decodings).
    Returns row -> {rank: hypothesis}, the routed rank included."""
    jobs = [(i, k) for i, ks in wanted.items() for k in ks if k != ranks[i]]
    again = (
        decode_rows([i for i, _ in jobs], torch.tensor([k for _, k in jobs], dtype=torch.long))
        if jobs
        else []
    )
    hyps: dict[int, dict[int, str]] = {i: {ranks[i]: texts[i]} for i in wanted}  # type: ignore[misc]
    for (i, k), text in zip(jobs, again, strict=True):
        hyps[i][k] = text
    return hyps


def decode_with_fallback(
    texts: list[str],
    ranks: Sequence[int | None],
    fallback: Fallback,
    decode_rows: Callable[[list[int], torch.Tensor], list[str]],
) -> tuple[list[str], list[dict[str, float | int | bool]]]:
    """Apply ``fallback`` to one decoded batch.

    Args:
        texts: the batch's hypotheses, one per row (in the order ``decode_rows`` indexes).
        ranks: each row's routed rank (None: no adapter).
        fallback: the threshold and the rank to decode flagged rows at.
        decode_rows: ``decode_rows(rows, ranks)`` decodes the rows ``rows`` of the batch with
            per-row ranks ``ranks`` [len(rows)] (int64) and returns their hypotheses.

    Returns:
        The hypotheses after the fallback, and one note per row (``{}`` when not flagged;
        else the compression ratio, the fallback rank, whether its hypothesis was kept and
        the routed rank's hypothesis).
    """
    rows = flagged_rows(texts, ranks, fallback)
    notes: list[dict[str, float | int | bool]] = [{} for _ in texts]
    if not rows:
        return texts, notes
    again = decode_rows(rows, torch.full((len(rows),), fallback.rank, dtype=torch.long))
    out = list(texts)
    for row, text in zip(rows, again, strict=True):
        kept = keep_better(texts[row], text)
        notes[row] = {
            "compression_ratio": round(compression_ratio(texts[row]), 3),
            "rank": fallback.rank,
            "kept": kept,
            # the routed rank's hypothesis, so that one evaluation also scores "no fallback"
            "routed_hyp": texts[row],
        }
        if kept:
            out[row] = text
    return out, notes


def offline_fallback(
    routed: Sequence[str], second: Sequence[str], ranks: Sequence[int | None], fallback: Fallback
) -> tuple[list[str], int, int]:
    """The fallback applied to hypotheses already decoded at both ranks (e.g. two stored
    evaluations, or a calibration's decodes at every rank): what ``decode_with_fallback``
    returns when its second decoding gives ``second``. Returns the hypotheses, the rows
    flagged and the rows whose fallback hypothesis was kept."""
    by_row = dict(enumerate(second))
    out, notes = decode_with_fallback(
        list(routed), ranks, fallback, lambda rows, _ranks: [by_row[r] for r in rows]
    )
    return out, sum(bool(n) for n in notes), sum(bool(n.get("kept")) for n in notes)


def fallback_at_every_rank(
    hyps: dict[str, dict[int, str]], fallback: Fallback
) -> tuple[dict[str, dict[int, str]], dict[int, int]]:
    """Transcripts decoded at every rank (utterance id -> {rank: text}, as calibration
    decodes them, the fallback rank among them) as they would be served with ``fallback``:
    each rank's looping hypothesis replaced by the fallback rank's where that loops less.
    Returns the new table and, per rank, how many hypotheses were replaced."""
    ids = list(hyps)
    out = {i: dict(hyps[i]) for i in ids}
    replaced: dict[int, int] = {}
    ranks = sorted({r for i in ids for r in hyps[i]})
    if fallback.rank not in ranks:
        raise ValueError(f"fallback rank {fallback.rank} was not decoded (ranks: {ranks})")
    for r in ranks:
        if r == fallback.rank:
            continue
        texts, _, kept = offline_fallback(
            [hyps[i][r] for i in ids], [hyps[i][fallback.rank] for i in ids], [r] * len(ids), fallback
        )
        for i, text in zip(ids, texts, strict=True):
            out[i][r] = text
        replaced[r] = kept
    return out, replaced
