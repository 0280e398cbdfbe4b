"""Results tables and plots: one evaluation, and several side by side (``compare``)."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from flexispeech.errors import FlexispeechError
from flexispeech.evaluation.breakdown import DURATION_ORDER, SNR_ORDER
from flexispeech.evaluation.speech_paired import group_by_corpus
from flexispeech.evaluation.tables import markdown_table, pct
from flexispeech.evaluation.text_report import KIND, markdown_text_summary, text_compare_table
from flexispeech.models.whisper import POSITIONS_PER_SECOND


def markdown_summary(result: dict[str, Any]) -> str:
    """A markdown report of one evaluation (results.md)."""
    if result.get("kind") == KIND:
        return markdown_text_summary(result)
    o = result["overall"]
    window = f" ({result['audio_ctx'] / POSITIONS_PER_SECOND:g}-s window)" if result.get("audio_ctx") else ""
    parts = [
        f"# {result['name']}{window}\n",
        markdown_table(
            [
                "utterances",
                "WER %",
                "CER %",
                "sub",
                "del",
                "ins",
                "mean rank",
                "active adapter params",
                "RTF",
            ],
            [
                [
                    result["n"],
                    pct(o["wer"]),
                    pct(o["cer"]),
                    o["sub"],
                    o["del"],
                    o["ins"],
                    f"{result['mean_rank']:.2f}",
                    f"{result['active_params_mean']:,.0f}",
                    f"{result['rtf']:.3f}",
                ]
            ],
        ),
    ]
    for title, key, order in (
        ("SNR", "by_snr", SNR_ORDER),
        ("duration", "by_duration", DURATION_ORDER),
        ("voice", "by_seen_voice", None),
        ("channel", "by_channel", None),
        ("speaker", "by_voice", None),
    ):
        table = result.get(key, {})  # by_channel: absent from results.json of older evaluations
        if not table:
            continue
        names = [n for n in order if n in table] if order else sorted(table)
        rows = [[n, table[n]["n"], pct(table[n]["wer"]), table[n]["ins"]] for n in names]
        parts.append(
            f"\n## WER by {title}\n\n" + markdown_table([title, "utterances", "WER %", "insertions"], rows)
        )
    if result["rank_histogram"]:
        rows = [[r, n] for r, n in result["rank_histogram"].items()]
        parts.append("\n## Ranks used\n\n" + markdown_table(["rank", "utterances"], rows))
        by_snr = result.get("ranks_by_snr", {})
        if by_snr:
            ranks = list(result["rank_histogram"])
            rows = [
                [b, *[by_snr[b].get(r, 0) for r in ranks], f"{_mean_rank(by_snr[b]):.2f}"]
                for b in SNR_ORDER
                if b in by_snr
            ]
            parts.append(
                "\n## Ranks by SNR (utterances)\n\n"
                + markdown_table(["SNR", *[f"r{r}" for r in ranks], "mean rank"], rows)
            )
    if o.get("n_empty_refs"):
        parts.append(
            f"\n{o['n_empty_refs']} utterance(s) with an empty normalised reference are not scored.\n"
        )
    if result.get("skipped"):
        parts.append(
            f"\n## Skipped ({len(result['skipped'])}: audio could not be decoded)\n\n"
            + "".join(f"- {s['id']}: {s['error']}\n" for s in result["skipped"])
        )
    return "".join(parts)


def _mean_rank(histogram: dict[str, int]) -> float:
    total = sum(histogram.values())
    return sum(int(r) * n for r, n in histogram.items()) / total if total else 0.0


ROW_KEYS = ("utterances", "examples")
"""Where a ``results.json`` of ``flexispeech eval`` keeps its rows: speech, text tasks."""


def results_file(path: str | Path) -> Path:
    """The results.json that ``path`` names: the file itself, or the one in its directory."""
    path = Path(path)
    return path / "results.json" if path.is_dir() else path


def load_run(path: str | Path) -> dict[str, Any]:
    """An evaluation's results.json (``path`` is the file or its directory), with the
    training summary of its run attached when one is found beside or above it."""
    path = Path(path)
    file = results_file(path)
    if not file.is_file():
        raise FlexispeechError(f"{path}: no results.json (run `flexispeech eval` first)")
    try:
        result = json.loads(file.read_text())
    except json.JSONDecodeError as err:  # an evaluation killed while writing, or a hand edit
        raise FlexispeechError(f"{file}: not valid JSON ({err})") from None
    # Every evaluation keeps its rows; another JSON file (a train_summary.json) has none.
    if not isinstance(result, dict) or not any(k in result for k in ROW_KEYS):
        raise FlexispeechError(f"{file}: not the results of `flexispeech eval` (no per-utterance rows)")
    for parent in (file.parent, file.parent.parent):
        summary = parent / "train_summary.json"
        if summary.is_file():
            result["train"] = json.loads(summary.read_text())
            break
    return result


def compare_table(results: Sequence[dict[str, Any]]) -> str:
    """Runs side by side: WER overall, by SNR bucket, on unseen voices; ranks; parameters; time."""
    kinds = {r.get("kind", "speech") for r in results}
    if len(kinds) > 1:
        raise FlexispeechError("compare: cannot put speech and text-task results in one table")
    if kinds == {KIND}:
        return text_compare_table(results)
    groups = group_by_corpus(results)
    if len(groups) > 1:  # runs of several corpora or windows: one table each
        return "".join(f"\n### {key}\n\n" + _speech_table(group) for key, group in groups.items()).lstrip(
            "\n"
        )
    return _speech_table(results)


def _speech_table(results: Sequence[dict[str, Any]]) -> str:
    """Speech runs of one corpus, split and window side by side."""
    snr_cols = [n for n in SNR_ORDER if any(n in r["by_snr"] for r in results)]
    header = (
        ["method", "WER %"]
        + [f"WER {n}" for n in snr_cols]
        + ["WER unseen voices", "ins", "mean rank", "active params", "train time s"]
    )
    rows = []
    for r in results:
        unseen = r["by_seen_voice"].get("unseen", {}).get("wer")
        train_s = r.get("train", {}).get("train_time_s")
        rows.append(
            [r["name"], pct(r["overall"]["wer"])]
            + [pct(r["by_snr"].get(n, {}).get("wer")) for n in snr_cols]
            + [
                pct(unseen),
                r["overall"]["ins"],
                f"{r['mean_rank']:.2f}",
                f"{r['active_params_mean']:,.0f}",
                "–" if train_s is None else f"{train_s:.0f}",
            ]
        )
    return markdown_table(header, rows)


def plot_wer_by_snr(results: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """WER per SNR bucket, one line per method (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    buckets = [n for n in SNR_ORDER if any(n in r["by_snr"] for r in results)]
    fig, ax = plt.subplots(figsize=(7, 4))
    for r in results:
        ys = [100 * r["by_snr"][b]["wer"] if b in r["by_snr"] else math.nan for b in buckets]
        ax.plot(buckets, ys, marker="o", label=r["name"])
    ax.set_xlabel("mixing SNR")
    ax.set_ylabel("WER %")
    ax.set_title("WER by SNR bucket")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def plot_ranks(results: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Share of utterances per rank, one group of bars per method (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ranks = sorted({int(k) for r in results for k in r["rank_histogram"]})
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.8 / max(len(results), 1)
    for i, r in enumerate(results):
        total = sum(r["rank_histogram"].values()) or 1
        shares = [100 * r["rank_histogram"].get(str(k), 0) / total for k in ranks]
        ax.bar([j + i * width for j in range(len(ranks))], shares, width=width, label=r["name"])
    ax.set_xticks([j + width * (len(results) - 1) / 2 for j in range(len(ranks))], [str(k) for k in ranks])
    ax.set_xlabel("rank")
    ax.set_ylabel("% of utterances")
    ax.set_title("Rank usage")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)
