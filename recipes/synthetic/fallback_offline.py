"""What the loop fallback (``flexispeech eval --fallback-rank``), or the consensus of the
ranks, would have changed, from hypotheses already decoded: no model, no audio.

    python recipes/synthetic/fallback_offline.py evals ROUTED_EVAL FALLBACK_EVAL
        two evaluations of one split (results.json or their folders): the routed run's, and
        one at the fallback rank (for a static adapter: the base model's evaluation)
    python recipes/synthetic/fallback_offline.py decodes DECODES_JSONL --synthetic gpu:0
        a calibration's decodes at every rank (``<run>/calibrate_validation/decodes.jsonl``)
        scored against the synthetic corpus' texts (size:seed, rebuilt without audio) or
        against a corpus folder (--data DIR): every served rank with every fallback rank;
        with --consensus also the hypothesis closest to all ranks' (evaluation.consensus),
        paired utterance by utterance against each rank alone

Prints WER without and with the fallback, the rows flagged and the rows that took the
fallback's hypothesis. The threshold is openai-whisper's 2.4 unless --threshold says otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from flexispeech.evaluation.consensus import consensus_index, word_distance
from flexispeech.evaluation.fallback import DEFAULT_THRESHOLD, Fallback, offline_fallback
from flexispeech.evaluation.metrics import error_counts, source_normalizer
from flexispeech.evaluation.paired import paired_difference, sign_test
from flexispeech.evaluation.report import load_run


def _wer(refs: Sequence[str], hyps: Sequence[str], normalize: Callable[[str], str]) -> float:
    return error_counts(refs, hyps, normalize)["wer"]


def from_evals(routed_path: Path, second_path: Path, threshold: float) -> list[str]:
    routed, second = load_run(routed_path), load_run(second_path)
    normalize = source_normalizer(routed.get("model") or "whisper-tiny.en")
    other = {u["id"]: u for u in second["utterances"]}
    rows = [u for u in routed["utterances"] if u["id"] in other]
    refs = [u["ref"] for u in rows]
    hyps = [u["hyp"] for u in rows]
    # Every routed row may fall back: the second evaluation stands for "another rank", so
    # the routed rows are marked 1 and the fallback 0 whatever ranks the runs served.
    out, flagged, kept = offline_fallback(
        hyps, [other[u["id"]]["hyp"] for u in rows], [1] * len(rows), Fallback(0, threshold)
    )

    # paired against the routed run, utterance by utterance (only replaced rows can differ)
    def errors(ref: str, hyp: str) -> int:
        c = error_counts([ref], [hyp], normalize)
        return c["sub"] + c["del"] + c["ins"]

    pairs = [(errors(r, a), errors(r, b)) for r, a, b in zip(refs, hyps, out) if a != b]
    better, worse = sum(b < a for a, b in pairs), sum(b > a for a, b in pairs)
    return [
        f"{routed['name']} with {second['name']} as fallback, threshold {threshold}, {len(rows)} utterances:",
        f"  WER {100 * _wer(refs, hyps, normalize):.2f} % -> {100 * _wer(refs, out, normalize):.2f} %; "
        f"{flagged} flagged, {kept} took the fallback's hypothesis; {better} better, {worse} worse, "
        f"sign test p = {sign_test(better, worse):.2g}",
    ]


def _references(args: argparse.Namespace) -> dict[str, str]:
    if args.data:
        from flexispeech.data.text import open_split

        split = open_split(args.data, args.split)
        return {split.record(i)["id"]: split.record(i)["ref"] for i in range(len(split))}
    from data_prep.synthetic import plan_texts

    size, seed = args.synthetic.split(":")
    return plan_texts(size, int(seed))


def consensus_lines(
    rows: Sequence[dict], refs: Sequence[str], ranks: Sequence[str], normalize: Callable[[str], str]
) -> list[str]:
    """The consensus of all ranks and of the ranks above 0, paired against each rank alone
    (Δ in WER points with its 95 % bootstrap interval, utterances better / worse, sign test)."""
    norm_refs = [normalize(r) for r in refs]
    words = sum(len(r.split()) for r in norm_refs)
    errors = {
        k: [word_distance(r, normalize(row["hyps"][k])) for r, row in zip(norm_refs, rows)] for k in ranks
    }
    out = []
    for name, pool in (("all ranks", list(ranks)), ("ranks above 0", [k for k in ranks if k != "0"])):
        picks = [pool[consensus_index([row["hyps"][k] for k in pool], normalize)] for row in rows]
        chosen = [errors[k][i] for i, k in enumerate(picks)]
        share = ", ".join(f"r{k} {picks.count(k)}" for k in pool)
        out.append(f"consensus of {name}: WER {100 * sum(chosen) / words:.2f} % (picked {share})")
        for k in pool:
            d = paired_difference(errors[k], chosen)
            scale = 100 * len(rows) / words  # mean errors per utterance -> WER points
            out.append(
                f"  against r{k} alone ({100 * sum(errors[k]) / words:.2f} %): {d.delta * scale:+.2f} points "
                f"[{d.ci_low * scale:+.2f}, {d.ci_high * scale:+.2f}], {d.losses} better / {d.wins} worse, "
                f"sign test p = {d.p_sign:.2g}"
            )
    return out


def from_decodes(
    path: Path, refs_by_id: dict[str, str], threshold: float, model: str, consensus: bool = False
) -> list[str]:
    lines = path.read_text().splitlines()
    header, rows = json.loads(lines[0]), [json.loads(line) for line in lines[1:]]
    missing = [r["id"] for r in rows if r["id"] not in refs_by_id]
    if missing:
        raise SystemExit(f"{path}: {len(missing)} utterances have no reference (first: {missing[0]})")
    normalize = source_normalizer(model)
    ranks = [str(r) for r in header["ranks"]]
    refs = [refs_by_id[r["id"]] for r in rows]
    out = [f"{path} ({len(rows)} utterances), threshold {threshold}"]
    out.append("served rank | WER % | " + " | ".join(f"fallback r{f} (flagged/kept)" for f in ranks))
    for served in ranks:
        hyps = [r["hyps"][served] for r in rows]
        cells = []
        for f in ranks:
            if f == served:
                cells.append("–")
                continue
            new, flagged, kept = offline_fallback(
                hyps, [r["hyps"][f] for r in rows], [int(served)] * len(rows), Fallback(int(f), threshold)
            )
            cells.append(f"{100 * _wer(refs, new, normalize):.2f} ({flagged}/{kept})")
        out.append(f"r{served} | {100 * _wer(refs, hyps, normalize):.2f} | " + " | ".join(cells))
    if consensus:
        out += consensus_lines(rows, refs, ranks, normalize)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="mode", required=True)
    evals = sub.add_parser("evals", help="a routed evaluation and one at the fallback rank")
    evals.add_argument("routed", type=Path)
    evals.add_argument("fallback", type=Path)
    decodes = sub.add_parser("decodes", help="a calibration's decodes at every rank")
    decodes.add_argument("decodes", type=Path)
    refs = decodes.add_mutually_exclusive_group(required=True)
    refs.add_argument("--data", help="corpus folder holding the references")
    refs.add_argument("--synthetic", metavar="SIZE:SEED", help="the synthetic corpus' texts, e.g. gpu:0")
    decodes.add_argument("--split", default="validation", help="split of --data (default: validation)")
    decodes.add_argument("--model", default="whisper-tiny.en", help="model whose normalizer scores")
    decodes.add_argument(
        "--consensus", action="store_true", help="also score the hypothesis closest to all ranks'"
    )
    for p in (evals, decodes):
        p.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD, help="compression ratio")
    args = parser.parse_args(argv)
    try:
        if args.mode == "evals":
            lines = from_evals(args.routed, args.fallback, args.threshold)
        else:
            lines = from_decodes(args.decodes, _references(args), args.threshold, args.model, args.consensus)
    except (OSError, KeyError, ValueError) as err:
        print(f"fallback_offline: {err}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
