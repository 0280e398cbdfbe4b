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
    python recipes/synthetic/fallback_offline.py consensus EVAL EVAL [EVAL ...]
        the consensus of stored evaluations of one split (lowest rank first), paired
        against each of them

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


def from_evals_consensus(paths: Sequence[Path]) -> list[str]:
    """The consensus of stored evaluations of one split (e.g. one adapter at several ranks,
    the base model as rank 0), over the utterances all of them decoded."""
    runs = [load_run(p) for p in paths]
    names = [r["name"] for r in runs]
    if len(set(names)) != len(names) or len(runs) < 2:
        raise ValueError(f"consensus needs two or more evaluations with distinct names, got {names}")
    by_id = [{u["id"]: u for u in r["utterances"] if "error" not in u} for r in runs]
    ids = [i for i in by_id[0] if all(i in b for b in by_id[1:])]
    normalize = source_normalizer(runs[0].get("model") or "whisper-tiny.en")
    hyps = [{n: b[i]["hyp"] for n, b in zip(names, by_id)} for i in ids]
    head = f"{len(ids)} utterances decoded by all of {', '.join(names)}"
    return [
        head,
        *consensus_lines(hyps, [by_id[0][i]["ref"] for i in ids], [("these runs", names)], normalize),
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
    hyps: Sequence[dict[str, str]],
    refs: Sequence[str],
    pools: Sequence[tuple[str, Sequence[str]]],
    normalize: Callable[[str], str],
) -> list[str]:
    """For each pool (a name and the keys of ``hyps`` it picks among, ties to the earlier
    key): the consensus's WER, paired against each key alone (Δ in WER points with its 95 %
    bootstrap interval, utterances better / worse, sign test). ``hyps``: per utterance, a
    hypothesis per key."""
    norm_refs = [normalize(r) for r in refs]
    words = sum(len(r.split()) for r in norm_refs)
    keys = list(dict.fromkeys(k for _, pool in pools for k in pool))
    errors = {k: [word_distance(r, normalize(h[k])) for r, h in zip(norm_refs, hyps)] for k in keys}
    out = []
    for name, pool in pools:
        picks = [pool[consensus_index([h[k] for k in pool], normalize)] for h in hyps]
        chosen = [errors[k][i] for i, k in enumerate(picks)]
        share = ", ".join(f"{k} {picks.count(k)}" for k in pool)
        out.append(f"consensus of {name}: WER {100 * sum(chosen) / words:.2f} % (picked {share})")
        for k in pool:
            d = paired_difference(errors[k], chosen)
            scale = 100 * len(hyps) / words  # mean errors per utterance -> WER points
            out.append(
                f"  against {k} alone ({100 * sum(errors[k]) / words:.2f} %): {d.delta * scale:+.2f} points "
                f"[{d.ci_low * scale:+.2f}, {d.ci_high * scale:+.2f}], {d.losses} better / {d.wins} worse, "
                f"sign test p = {d.p_sign:.2g}"
            )
    return out


def from_decodes(
    path: Path,
    refs_by_id: dict[str, str],
    threshold: float,
    model: str,
    consensus: bool = False,
    pools: Sequence[str] = (),
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
        hyps = [{f"r{k}": r["hyps"][k] for k in ranks} for r in rows]
        labels = [f"r{k}" for k in ranks]
        chosen = [("all ranks", labels), ("ranks above 0", [k for k in labels if k != "r0"])]
        if pools:  # --pool 0,2,4: the ranks named, lowest first
            chosen = [(p, [f"r{k}" for k in sorted({int(k) for k in p.split(",")})]) for p in pools]
            unknown = sorted({k for _, ks in chosen for k in ks} - set(labels))
            if unknown:
                raise ValueError(f"--pool: ranks {unknown} were not decoded (ranks: {labels})")
        out += consensus_lines(hyps, refs, chosen, normalize)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="mode", required=True)
    evals = sub.add_parser("evals", help="a routed evaluation and one at the fallback rank")
    evals.add_argument("routed", type=Path)
    evals.add_argument("fallback", type=Path)
    agree = sub.add_parser("consensus", help="the consensus of stored evaluations of one split")
    agree.add_argument(
        "runs", type=Path, nargs="+", help="evaluations, lowest rank first (ties go to the earlier)"
    )
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
    decodes.add_argument(
        "--pool",
        action="append",
        default=[],
        metavar="R,R,...",
        help="with --consensus: the ranks to pick among (repeat for several pools; "
        "default: all ranks, and the ranks above 0)",
    )
    for p in (evals, decodes):
        p.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD, help="compression ratio")
    args = parser.parse_args(argv)
    try:
        if args.mode == "evals":
            lines = from_evals(args.routed, args.fallback, args.threshold)
        elif args.mode == "consensus":
            lines = from_evals_consensus(args.runs)
        else:
            lines = from_decodes(
                args.decodes, _references(args), args.threshold, args.model, args.consensus, args.pool
            )
    except (OSError, KeyError, ValueError) as err:
        print(f"fallback_offline: {err}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
