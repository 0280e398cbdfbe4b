"""Report on a synthetic corpus: size, engines, and how well the blind SNR estimators work.

    python -m data_prep.report_signals CORPUS_DIR [--split test] [--wer-column wer] [--cache]

Prints markdown tables: build time and hours, utterances per engine and split, and the
mean absolute error of each SNR estimator against the known mixing SNR (stationary noise
and babble separately, by SNR). If the split has a per-utterance WER column (e.g. added by
an evaluation with ``flexispeech.corpus.add_columns``), it also prints the Spearman
correlation of each signal with WER. ``--cache`` stores the signals as corpus columns.
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

import numpy as np
from tqdm import tqdm

from flexispeech.corpus import add_columns, load_corpus, load_row_audio, read_corpus_info
from flexispeech.signals.audio import SNR_MAX_DB, percentile_snr_db, speech_activity, wada_snr_db

ESTIMATORS = {"percentile": percentile_snr_db, "wada": wada_snr_db}


def measure(corpus: Path, split: str) -> list[dict]:
    """Per-utterance signals of ``split``: one dict per row with the row's labels."""
    rows = []
    for row in tqdm(load_corpus(corpus, split), desc=f"signals {split}", unit="utt"):
        samples = load_row_audio(corpus, row)
        out = {k: row.get(k) for k in ("id", "engine", "snr_db", "noise_type", "seen_voice", "duration")}
        out.update({f"snr_{n}": f(samples, 16_000) for n, f in ESTIMATORS.items()})
        out["speech_activity"] = speech_activity(samples, 16_000)
        rows.append(out)
    return rows


def _mae(rows: list[dict], key: str) -> str:
    errors = [abs(r[key] - r["snr_db"]) for r in rows]
    return f"{np.mean(errors):.2f}" if errors else "-"


def snr_table(rows: list[dict]) -> list[str]:
    """Markdown: MAE (dB) per estimator, by noise family and mixing SNR."""
    lines = ["| noise | SNR (dB) | n | " + " | ".join(f"MAE {n}" for n in ESTIMATORS) + " |",
             "| --- | --- | --- | " + " | ".join("---" for _ in ESTIMATORS) + " |"]
    families = {"stationary (white/pink/brown)": ("white", "pink", "brown"), "babble": ("babble",)}
    for name, kinds in families.items():
        noisy = [r for r in rows if r["noise_type"] in kinds]
        for snr in sorted({r["snr_db"] for r in noisy}):
            at = [r for r in noisy if r["snr_db"] == snr]
            lines.append(f"| {name} | {snr:g} | {len(at)} | " + " | ".join(_mae(at, f"snr_{n}") for n in ESTIMATORS) + " |")
        lines.append(f"| {name} | all | {len(noisy)} | " + " | ".join(f"**{_mae(noisy, f'snr_{n}')}**" for n in ESTIMATORS) + " |")
    for kind in ("white", "pink", "brown"):
        at = [r for r in rows if r["noise_type"] == kind]
        lines.append(f"| {kind} | all | {len(at)} | " + " | ".join(_mae(at, f"snr_{n}") for n in ESTIMATORS) + " |")
    clean = [r for r in rows if r["noise_type"] == "none"]
    if clean:
        at_max = np.mean([r["snr_percentile"] >= SNR_MAX_DB - 10 for r in clean])
        lines.append(f"\nClean clips: {len(clean)}; percentile estimate >= {SNR_MAX_DB - 10:g} dB on {at_max:.0%}.")
    return lines


def _spearman(a: list[float], b: list[float]) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def wer_table(corpus: Path, split: str, rows: list[dict], column: str) -> list[str]:
    """Markdown: Spearman correlation of each signal with the per-utterance WER column."""
    ds = load_corpus(corpus, split)
    if column not in ds.column_names:
        return [f"(no {column!r} column in {split}: WER correlations skipped)"]
    wer = ds[column]
    lines = [f"| signal | Spearman rho with {column} |", "| --- | --- |"]
    for key in ("duration", "snr_percentile", "snr_wada", "speech_activity"):
        lines.append(f"| {key} | {_spearman([r[key] for r in rows], wer):+.3f} |")
    return lines


def report(corpus: Path, split: str, wer_column: str, cache: bool) -> str:
    info = read_corpus_info(corpus)
    dataset = load_corpus(corpus)
    meta = info.get("info", {})
    lines = [f"Corpus {corpus.name}: {sum(info['splits'].values())} utterances, {info['hours']:.2f} h, "
             f"splits {info['splits']}, built in {meta.get('build_seconds', '?')} s with "
             f"{meta.get('workers', '?')} workers; engines missing: {meta.get('engines_missing') or 'none'}.",
             "", "| engine | " + " | ".join(dataset) + " | voices |", "| --- |" + " --- |" * (len(dataset) + 1)]
    counts = {s: Counter(ds["engine"]) for s, ds in dataset.items()}
    for engine in sorted(set().union(*counts.values())):
        voices = {sp for ds in dataset.values() for sp, e in zip(ds["speaker"], ds["engine"]) if e == engine}
        lines.append(f"| {engine} | " + " | ".join(str(counts[s][engine]) for s in dataset) + f" | {len(voices)} |")
    rows = measure(corpus, split)
    unseen = sum(1 for r in rows if not r["seen_voice"])
    lines += ["", f"SNR estimators on split {split!r} ({len(rows)} clips, {unseen} by unseen voices):", ""]
    lines += snr_table(rows)
    lines += [""] + wer_table(corpus, split, rows, wer_column)
    if cache:
        add_columns(corpus, split, {"snr_est": [r["snr_percentile"] for r in rows],
                                    "speech_activity": [r["speech_activity"] for r in rows]})
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("corpus", type=Path)
    parser.add_argument("--split", default="test")
    parser.add_argument("--wer-column", default="wer")
    parser.add_argument("--cache", action="store_true", help="store the signals as corpus columns")
    args = parser.parse_args(argv)
    print(report(args.corpus, args.split, args.wer_column, args.cache))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
