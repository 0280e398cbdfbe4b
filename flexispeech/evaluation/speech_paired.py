"""Paired comparisons of speech evaluations, utterance by utterance, against one baseline run.

Two runs decoded on the same utterances differ on a few of them; ``paired_difference``
(``paired.py``) says on how many and whether the gap is more than noise. Here the
per-utterance score is the number of word errors (substitutions + deletions + insertions
after normalisation). The references are the same for both runs, so the mean per-utterance
error difference times ``n / W`` (utterances over reference words) *is* the corpus-WER
difference, and the same factor maps its bootstrap interval; the interval resamples
utterances with the reference words of the whole subset as the denominator.

Runs are grouped by what they were evaluated on: the corpus directory, the split and the
Whisper window (``data``, ``split`` and ``audio_ctx`` of results.json). A baseline is
looked up inside each group, so one ``compare`` call pairs the synthetic test split, a
real-speech corpus and each window separately, never one utterance against another.
Within a group each run is compared overall, on every SNR bucket present (clean first),
on seen and unseen voices, on wideband and telephone-channel audio, and, for a run that
served more than one rank, on the utterances it served at each rank ("served rank r":
where a routed run gains or loses against the baseline, e.g. the easy utterances it kept
at rank 0).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from flexispeech.errors import FlexispeechError
from flexispeech.evaluation.breakdown import SNR_ORDER, snr_bucket
from flexispeech.evaluation.paired import paired_difference, sign_test
from flexispeech.evaluation.tables import markdown_table
from flexispeech.models.whisper import POSITIONS_PER_SECOND

Record = dict[str, Any]


def corpus_key(result: dict[str, Any]) -> str:
    """What a result was evaluated on, as a heading: ``<corpus> <split>, <window> s window``."""
    data = result.get("data")
    name = Path(data).name if data else "corpus"
    window = result.get("audio_ctx")
    return f"{name} {result.get('split', '?')}" + (
        f", {window / POSITIONS_PER_SECOND:g} s window" if window else ""
    )


def group_by_corpus(results: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Results grouped by :func:`corpus_key`, in the order each group is first met."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        groups.setdefault(corpus_key(r), []).append(r)
    return groups


def _scored(result: dict[str, Any]) -> dict[str, Record]:
    """Id -> utterance record, for the utterances that have an error count."""
    utts = result.get("utterances") or []
    if utts and "errors" not in utts[0]:
        raise FlexispeechError(
            f"{result['name']}: results.json has no per-utterance error counts "
            "(written by an older `flexispeech eval`); evaluate it again"
        )
    return {str(u["id"]): u for u in utts if u.get("errors") is not None}


SUBSETS: list[tuple[str, Callable[[Record], bool]]] = [("all", lambda u: True)]
SUBSETS += [(f"SNR {b}", lambda u, b=b: snr_bucket(u.get("snr_db")) == b) for b in SNR_ORDER]
SUBSETS += [
    ("seen voices", lambda u: u.get("seen_voice") is True),
    ("unseen voices", lambda u: u.get("seen_voice") is False),
    ("wideband channel", lambda u: u.get("channel") == "wideband"),
    ("telephone channel", lambda u: u.get("channel") == "telephone"),
]


def paired_rows(base: dict[str, Any], run: dict[str, Any]) -> list[list[Any]]:
    """Table rows of ``run`` against ``base``: one per non-empty subset (:data:`SUBSETS`, then
    one per rank ``run`` served when it served several); "better" counts the utterances
    where ``run`` makes fewer errors than ``base``.

    Raises FlexispeechError when the two were not scored on the same utterances.
    """
    ours, theirs = _scored(run), _scored(base)
    if set(ours) != set(theirs):
        raise FlexispeechError(
            f"{run['name']} and {base['name']} were not scored on the same utterances "
            f"({len(ours)} and {len(theirs)}) in {corpus_key(run)}"
        )
    subsets = [(label, keep, theirs) for label, keep in SUBSETS]
    served = sorted({int(u["rank"]) for u in ours.values() if u.get("rank") is not None})
    if len(served) > 1:  # a routed run: its own ranks split the utterances
        subsets += [(f"served rank {r}", lambda u, r=r: u.get("rank") == r, ours) for r in served]
    rows = []
    for label, keep, records in subsets:
        ids = sorted(i for i in theirs if keep(records[i]))
        words = sum(theirs[i]["ref_words"] for i in ids)
        if not ids or not words:
            continue
        a = [float(theirs[i]["errors"]) for i in ids]
        b = [float(ours[i]["errors"]) for i in ids]
        scale = 100.0 * len(ids) / words  # mean error difference per utterance -> WER points
        if len(ids) > 1:
            d = paired_difference(a, b)
            delta, ci = d.delta, f"[{scale * d.ci_low:+.1f}, {scale * d.ci_high:+.1f}]"
            wins, losses, ties, p = d.wins, d.losses, d.ties, d.p_sign
        else:  # one utterance: no interval to resample
            delta, ci = b[0] - a[0], "–"
            wins, losses = int(b[0] > a[0]), int(b[0] < a[0])
            ties, p = 1 - wins - losses, sign_test(wins, losses)
        mean_a, mean_b = f"{100 * sum(a) / words:.1f}", f"{100 * sum(b) / words:.1f}"
        rows.append(
            [
                run["name"],
                label,
                len(ids),
                mean_a,
                mean_b,
                f"{scale * delta:+.1f}",
                ci,
                losses,
                wins,
                ties,
                f"{p:.3g}",
            ]
        )
    return rows


def speech_paired_table(results: Sequence[dict[str, Any]], baseline: str) -> str:
    """Every speech run against the run named ``baseline``, per corpus group (markdown).

    A group without a run of that name is left out with a line saying so; no group having
    one is a FlexispeechError.
    """
    parts, found = [], False
    for key, group in group_by_corpus(results).items():
        named = {r["name"]: r for r in group}
        if baseline not in named:
            parts.append(f"\n{key}: no run named {baseline!r} (runs: {', '.join(named)}); not compared\n")
            continue
        found = True
        rows = [row for r in group if r["name"] != baseline for row in paired_rows(named[baseline], r)]
        header = [
            "method",
            "utterances",
            "n",
            f"WER {baseline} %",
            "WER %",
            "Δ WER (points)",
            "95% CI",
            "better",
            "worse",
            "same",
            "sign test p",
        ]
        parts.append(f"\n### {key}: paired against {baseline}\n\n" + markdown_table(header, rows))
    if not found:
        raise FlexispeechError(
            f"--baseline {baseline!r}: no run of that name "
            f"(runs: {', '.join(sorted({r['name'] for r in results}))})"
        )
    return "".join(parts)
