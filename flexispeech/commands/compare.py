"""``flexispeech compare``: evaluations side by side (a markdown table and plots)."""

from __future__ import annotations

import argparse

HELP = "print evaluation results side by side (WER overall/by SNR/unseen voices, ranks, parameters)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", help="results.json files or the directories holding them")
    parser.add_argument("--out", help="also write compare.md, wer_by_snr.png and ranks.png into this directory")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from flexispeech.report import compare_table, load_run, plot_ranks, plot_wer_by_snr

    results = [load_run(r) for r in args.runs]
    table = compare_table(results)
    print(table, end="")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "compare.md").write_text(table)
        if all("by_snr" in r for r in results):  # speech results (text tasks have levels, not SNR)
            plot_wer_by_snr(results, out / "wer_by_snr.png")
        routed = [r for r in results if r["rank_histogram"]]
        if routed:
            plot_ranks(routed, out / "ranks.png")
    return 0
