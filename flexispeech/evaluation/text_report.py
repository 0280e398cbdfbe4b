"""Scores and tables of text-task evaluations (math accuracy, QA exact match / token F1).

``summarize_text`` is the text counterpart of :func:`flexispeech.evaluation.evaluate.summarize`: the
records of :func:`flexispeech.evaluation.evaluate.decode_split` on a ``TextTaskSplit`` in, a result
dict with the same rank/parameter keys out, broken down by the task's difficulty level
(math: number of steps; QA: hops). ``flexispeech.evaluation.report`` hands text results here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from flexispeech.evaluation.breakdown import rank_summary
from flexispeech.evaluation.tables import markdown_table, pct
from flexispeech.evaluation.text_metrics import exact_match, extract_final_number, numeric_match, token_f1

KIND = "text"  # results["kind"]: how report.py tells text results from speech ones


def score_record(record: dict[str, Any]) -> dict[str, Any]:
    """Add ``correct`` (final-number match), ``em`` and ``f1`` to one prediction record."""
    hyp, golds = record["hyp"], record["golds"]
    record["pred_number"] = extract_final_number(hyp)
    record["correct"] = float(any(numeric_match(hyp, g) for g in golds))
    record["em"] = exact_match(hyp, golds)
    record["f1"] = token_f1(hyp, golds)
    return record


def _scores(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    n = len(records)
    ranks = [r["rank"] for r in records if r["rank"] is not None]
    return {
        "n": n,
        "accuracy": sum(r["correct"] for r in records) / n if n else float("nan"),
        "em": sum(r["em"] for r in records) / n if n else float("nan"),
        "f1": sum(r["f1"] for r in records) / n if n else float("nan"),
        "mean_rank": sum(ranks) / len(ranks) if ranks else None,
    }


def summarize_text(
    records: Sequence[dict[str, Any]],
    metric: str,
    decode_s: float,
    model: torch.nn.Module | None = None,
    name: str = "run",
    task: str = "",
) -> dict[str, Any]:
    """Overall and per-difficulty scores, rank histogram and active adapter parameters.

    Args:
        records: ``decode_split`` records of a text split (``hyp``, ``golds``, ``rank``,
            ``difficulty``, ``signals``).
        metric: the task's headline metric: ``accuracy`` (math) or ``f1`` (QA).
        decode_s: decoding seconds.
        model: the adapted model (None for the base model: no adapter parameters).
        name: the method's name in tables.
        task: the task's name (``math``, ``qa``, ``gsm8k``, ``squad``).
    """
    records = [score_record(dict(r)) for r in records]
    groups: dict[int, list[dict[str, Any]]] = {}
    for rec in records:
        groups.setdefault(int(rec["difficulty"]), []).append(rec)
    ranks = [r["rank"] for r in records if r["rank"] is not None]
    result: dict[str, Any] = {
        "kind": KIND,
        "name": name,
        "task": task,
        "metric": metric,
        "n": len(records),
        "overall": _scores(records),
        "by_difficulty": {str(k): _scores(g) for k, g in sorted(groups.items())},
        "decode_s": round(decode_s, 2),
        **rank_summary(model, ranks),
    }
    result["examples"] = records
    return result


RANK_KEYS = ("rank_histogram", "mean_rank", "adapter_params_total", "active_params_mean")


def rescore_text(result: dict[str, Any]) -> dict[str, Any]:
    """``result`` (a text evaluation's results.json) scored again from its stored
    predictions with the current scoring code; nothing is decoded again. For a change in
    answer extraction: the ranks, parameter counts and every other key are kept."""
    fresh = summarize_text(
        result["examples"], result["metric"], result["decode_s"], None, result["name"], result["task"]
    )
    return {**result, **{k: v for k, v in fresh.items() if k not in RANK_KEYS}}


def _headline(result: dict[str, Any]) -> list[tuple[str, str]]:
    """(column title, score key) of the task's metrics: accuracy, or EM and F1."""
    return (
        [("accuracy %", "accuracy")] if result["metric"] == "accuracy" else [("EM %", "em"), ("F1 %", "f1")]
    )


def markdown_text_summary(result: dict[str, Any]) -> str:
    """A markdown report of one text evaluation (results.md)."""
    cols = _headline(result)
    o = result["overall"]
    parts = [
        f"# {result['name']} ({result['task']})\n\n",
        markdown_table(
            ["questions", *[c for c, _ in cols], "mean rank", "active adapter params", "decode s"],
            [
                [
                    o["n"],
                    *[pct(o[k]) for _, k in cols],
                    f"{result['mean_rank']:.2f}",
                    f"{result['active_params_mean']:,.0f}",
                    f"{result['decode_s']:.1f}",
                ]
            ],
        ),
        "\n## By difficulty level\n\n",
        markdown_table(
            ["level", "questions", *[c for c, _ in cols], "mean rank"],
            [
                [
                    lvl,
                    s["n"],
                    *[pct(s[k]) for _, k in cols],
                    "–" if s["mean_rank"] is None else f"{s['mean_rank']:.2f}",
                ]
                for lvl, s in result["by_difficulty"].items()
            ],
        ),
    ]
    if result["rank_histogram"]:
        parts.append(
            "\n## Ranks used\n\n"
            + markdown_table(["rank", "questions"], list(result["rank_histogram"].items()))
        )
    return "".join(parts)


def text_compare_table(results: Sequence[dict[str, Any]]) -> str:
    """Text runs side by side: headline metric(s) overall and per difficulty level, mean
    rank, mean active adapter parameters, training time."""
    cols = _headline(results[0])
    levels = sorted({lvl for r in results for lvl in r["by_difficulty"]}, key=int)
    key = cols[-1][1]  # per-level columns show the last headline metric (accuracy or F1)
    short = cols[-1][0].split()[0]
    header = [
        "method",
        *[c for c, _ in cols],
        *[f"{short} L{lvl}" for lvl in levels],
        "mean rank",
        "active params",
        "train time s",
    ]
    rows = []
    for r in results:
        train_s = r.get("train", {}).get("train_time_s")
        rows.append(
            [
                r["name"],
                *[pct(r["overall"][k]) for _, k in cols],
                *[pct(r["by_difficulty"].get(lvl, {}).get(key)) for lvl in levels],
                f"{r['mean_rank']:.2f}",
                f"{r['active_params_mean']:,.0f}",
                "–" if train_s is None else f"{train_s:.0f}",
            ]
        )
    return markdown_table(header, rows)
