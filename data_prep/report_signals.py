"""Report on a synthetic corpus: size, engines, and how well the blind SNR estimators work.

    python -m data_prep.report_signals CORPUS_DIR [--split test] [--wer-column base_wer]

Prints markdown tables: build time and hours, utterances per engine and split, and the
mean absolute error of each SNR estimator against the known mixing SNR (stationary noise
and babble separately, by SNR). If the split has a per-utterance WER column (e.g. added by
an evaluation with ``flexispeech.data.corpus.add_columns``), it also prints the Spearman
correlation of each signal with WER, and the base model's WER by SNR and by engine.
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

import numpy as np
from tqdm import tqdm

from flexispeech.data.corpus import load_corpus, load_row_audio, read_corpus_info
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
    lines = [
        "| noise | SNR (dB) | n | " + " | ".join(f"MAE {n}" for n in ESTIMATORS) + " |",
        "| --- | --- | --- | " + " | ".join("---" for _ in ESTIMATORS) + " |",
    ]
    families = {"stationary (white/pink/brown)": ("white", "pink", "brown"), "babble": ("babble",)}
    for name, kinds in families.items():
        noisy = [r for r in rows if r["noise_type"] in kinds]
        for snr in sorted({r["snr_db"] for r in noisy}):
            at = [r for r in noisy if r["snr_db"] == snr]
            lines.append(
                f"| {name} | {snr:g} | {len(at)} | "
                + " | ".join(_mae(at, f"snr_{n}") for n in ESTIMATORS)
                + " |"
            )
        lines.append(
            f"| {name} | all | {len(noisy)} | "
            + " | ".join(f"**{_mae(noisy, f'snr_{n}')}**" for n in ESTIMATORS)
            + " |"
        )
    for kind in ("white", "pink", "brown"):
        at = [r for r in rows if r["noise_type"] == kind]
        lines.append(
            f"| {kind} | all | {len(at)} | " + " | ".join(_mae(at, f"snr_{n}") for n in ESTIMATORS) + " |"
        )
    clean = [r for r in rows if r["noise_type"] == "none"]
    if clean:
        at_max = np.mean([r["snr_percentile"] >= SNR_MAX_DB - 10 for r in clean])
        lines.append(
            f"\nClean clips: {len(clean)}; percentile estimate >= {SNR_MAX_DB - 10:g} dB on {at_max:.0%}."
        )
    return lines


def _spearman(a: list[float], b: list[float]) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def wer_table(corpus: Path, split: str, rows: list[dict], column: str) -> list[str]:
    """Markdown: Spearman correlation of each signal (the estimators measured here and
    every cached ``signal_*`` column, e.g. the decoder-confidence proxy) with the
    per-utterance WER column, over the rows where it is defined."""
    ds = load_corpus(corpus, split)
    if column not in ds.column_names:
        return [f"(no {column!r} column in {split}: run `flexispeech signals --model ...` first)"]
    wer = np.array([np.nan if w is None else w for w in ds[column]], dtype=float)
    ok = np.isfinite(wer)
    signals = {
        key: np.array([r[key] for r in rows], dtype=float)
        for key in ("duration", "snr_percentile", "snr_wada", "speech_activity")
    }
    for name in ds.column_names:
        if name.startswith("signal_") and name[7:] not in ("duration", "snr_db", "speech_activity"):
            signals[name[7:]] = np.array([np.nan if v is None else v for v in ds[name]], dtype=float)
    lines = [
        f"Spearman correlation with {column} over {int(ok.sum())} utterances of {split!r}:",
        "",
        f"| signal | Spearman rho with {column} |",
        "| --- | --- |",
    ]
    for key, values in signals.items():
        both = ok & np.isfinite(values)
        lines.append(f"| {key} | {_spearman(list(values[both]), list(wer[both])):+.3f} |")
    return lines


def base_wer_tables(corpus: Path, split: str, hyp_column: str = "base_hyp") -> list[str]:
    """Markdown: the base model's WER by SNR bucket and by engine, from the transcripts
    that ``flexispeech signals`` cached (rows without one are left out)."""
    from flexispeech.evaluation.breakdown import SNR_ORDER, snr_bucket
    from flexispeech.evaluation.metrics import error_counts

    ds = load_corpus(corpus, split)
    if hyp_column not in ds.column_names:
        return [f"(no {hyp_column!r} column in {split}: run `flexispeech signals --model ...` first)"]
    rows = [r for r in ds if r.get("base_wer") is not None and np.isfinite(r["base_wer"])]
    lines = []
    for title, key, order in (
        ("SNR", lambda r: snr_bucket(r["snr_db"]), SNR_ORDER),
        ("engine", lambda r: r["engine"], None),
    ):
        groups: dict[str, list[dict]] = {}
        for r in rows:
            groups.setdefault(key(r), []).append(r)
        names = [n for n in order if n in groups] if order else sorted(groups)
        lines += [
            "",
            f"Base model WER by {title} ({split!r}, {len(rows)} utterances):",
            "",
            f"| {title} | utterances | WER % | insertions |",
            "| --- | --- | --- | --- |",
        ]
        for n in names:
            c = error_counts([r["text"] for r in groups[n]], [r[hyp_column] for r in groups[n]])
            lines.append(f"| {n} | {len(groups[n])} | {100 * c['wer']:.1f} | {c['ins']} |")
    return lines


def report(corpus: Path, split: str, wer_column: str) -> str:
    info = read_corpus_info(corpus)
    dataset = load_corpus(corpus)
    meta = info.get("info", {})
    lines = [
        f"Corpus {corpus.name}: {sum(info['splits'].values())} utterances, {info['hours']:.2f} h, "
        f"splits {info['splits']}, built in {meta.get('build_seconds', '?')} s with "
        f"{meta.get('workers', '?')} workers; engines missing: {meta.get('engines_missing') or 'none'}.",
        "",
        "| engine | " + " | ".join(dataset) + " | voices |",
        "| --- |" + " --- |" * (len(dataset) + 1),
    ]
    counts = {s: Counter(ds["engine"]) for s, ds in dataset.items()}
    for engine in sorted(set().union(*counts.values())):
        voices = {sp for ds in dataset.values() for sp, e in zip(ds["speaker"], ds["engine"]) if e == engine}
        lines.append(
            f"| {engine} | " + " | ".join(str(counts[s][engine]) for s in dataset) + f" | {len(voices)} |"
        )
    rows = measure(corpus, split)
    unseen = sum(1 for r in rows if not r["seen_voice"])
    lines += ["", f"SNR estimators on split {split!r} ({len(rows)} clips, {unseen} by unseen voices):", ""]
    lines += snr_table(rows)
    lines += [""] + wer_table(corpus, split, rows, wer_column)
    lines += base_wer_tables(corpus, split)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("corpus", type=Path)
    parser.add_argument("--split", default="test")
    parser.add_argument(
        "--wer-column",
        default="base_wer",
        help="per-utterance WER column (default: base_wer, cached by `flexispeech signals --model ...`)",
    )
    args = parser.parse_args(argv)
    print(report(args.corpus, args.split, args.wer_column))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
