"""``flexispeech compare``: evaluations side by side (a markdown table and plots)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HELP = "print evaluation results side by side (WER overall/by SNR/unseen voices, ranks, parameters)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", help="results.json files or the directories holding them")
    parser.add_argument(
        "--out", help="also write compare.md, wer_by_snr.png and ranks.png into this directory"
    )
    parser.add_argument(
        "--baseline",
        metavar="NAME",
        action="append",
        help="also compare every run with the run of this name example by example: the gap's "
        "95%% bootstrap interval, examples better / worse, a sign test. Speech: per-utterance "
        "word errors, overall, per SNR bucket and on seen / unseen voices, separately for each "
        "corpus, split and window the runs were evaluated on (pass eval dirs of several "
        "corpora, e.g. a real-speech one, in one call). Repeat for several baselines",
    )
    parser.add_argument(
        "--rescore",
        action="store_true",
        help="text tasks: score each run's stored predictions again with the current answer "
        "extraction and rewrite its results.json / results.md (nothing is decoded again)",
    )


def run(args: argparse.Namespace) -> int:
    from flexispeech.errors import FlexispeechError
    from flexispeech.evaluation.report import (
        compare_table,
        load_run,
        plot_ranks,
        plot_wer_by_snr,
        results_file,
    )

    if args.out and Path(args.out).exists() and not Path(args.out).is_dir():
        raise FlexispeechError(f"{args.out}: --out is a file; give a directory for compare.md and the plots")
    by_file: dict[Path, str] = {}
    for run in args.runs:  # the first argument naming each results.json, in the order given
        by_file.setdefault(results_file(run).resolve(), run)
    runs = list(by_file.values())
    if len(runs) < len(args.runs):  # a run paired with itself would read as a tie on every utterance
        print(
            f"warning: compare: {len(args.runs) - len(runs)} run(s) given twice, compared once",
            file=sys.stderr,
        )
    results = [load_run(r) for r in runs]
    if args.rescore:
        results = [_rescored(r, path) for r, path in zip(results, runs)]
    table = compare_table(results)
    for baseline in args.baseline or ():
        from flexispeech.evaluation.paired import paired_table
        from flexispeech.evaluation.speech_paired import speech_paired_table
        from flexispeech.evaluation.text_report import KIND

        if len({r.get("kind") == KIND for r in results}) > 1:
            raise FlexispeechError("--baseline: cannot pair speech and text-task results")
        text = results[0].get("kind") == KIND
        table += "\n" + (paired_table(results, baseline) if text else speech_paired_table(results, baseline))
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


def _rescored(result: dict, path: str) -> dict:
    """A text result scored again and written back beside its old self (speech: unchanged)."""
    from flexispeech.evaluation.evaluate import write_results
    from flexispeech.evaluation.text_report import KIND, rescore_text

    if result.get("kind") != KIND:
        return result
    train = result.pop("train", None)  # attached by load_run, not part of results.json
    result = rescore_text(result)
    write_results(result, Path(path) if Path(path).is_dir() else Path(path).parent)
    return result if train is None else {**result, "train": train}
