"""The joint pick (``flexispeech eval --joint-ranks``) served again from its stored scores,
under other rules: a weight on the base model's score, or scores per token. No audio is
decoded: each scored utterance's note holds every rank's transcript and the score matrix.

    python recipes/synthetic/joint_offline.py EVAL [EVAL ...] [--weights 0,0.5,1]
    python recipes/synthetic/joint_offline.py VALIDATION_EVAL --budget 0.5
        also names the largest weight whose WER is within 0.5 points of the smallest
        weight's: the base model's vote at that weight costs at most that much in-domain
    python recipes/synthetic/joint_offline.py EVAL --where "snr_db>=15,proxy_entropy<=0.8"
        also a rule per condition: the base model votes (weight 1) on the utterances whose
        routing signal meets it, not at all (weight 0) on the others

EVAL: an evaluation run with ``--joint-ranks`` (results.json or its folder). For each, one
row per rule: "sum, base weight w" picks the transcript with the highest
``w * score_at_rank_0 + score_at_routed_rank`` (w = 1 is what eval served, and the row
checks that it reproduces the stored WER); "per token" divides each score by the
transcript's token count first (summed log-probabilities favour short transcripts, and a
model that drops words in noise writes short ones); "base votes where S>=T" gives the base
model its vote only on utterances whose stored routing signal S (``snr_db``,
``proxy_entropy``, ...) meets the condition: a veto kept for clean or confidently decoded
speech and dropped in noise, where the base model is often wrong. Where the evaluation had the loop
fallback (``--fallback-rank 0``), a looping pick is replaced by the base model's transcript
as eval does. Each rule is paired utterance by utterance against what eval served.

These are readings of one evaluation, not tuned settings: a weight chosen here on a test
split would be chosen on the yardstick. A weight to serve has to come from a validation split
(``--budget`` on its evaluation; ``eval --joint-base-weight`` then serves it).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from flexispeech.errors import ConfigError
from flexispeech.evaluation.fallback import DEFAULT_THRESHOLD, Fallback, offline_fallback
from flexispeech.evaluation.joint import joint_pick
from flexispeech.evaluation.metrics import error_counts, source_normalizer
from flexispeech.evaluation.paired import sign_test
from flexispeech.evaluation.report import load_run


def scored_rows(run: dict[str, Any]) -> list[dict[str, Any]]:
    """The utterances whose joint note has scores (the others' transcripts agreed)."""
    return [u for u in run["utterances"] if u.get("joint", {}).get("scores")]


def pick(note: dict[str, Any], weights: dict[str, float], per_token: dict[str, int] | None = None) -> str:
    """The rank (as its key in ``note["hyps"]``) whose transcript the rule serves: scores
    weighted by scoring rank (``weights``, 1 where not named), optionally each divided by
    its transcript's token count ``per_token[candidate]``."""
    ranks = list(note["scores"])
    matrix = torch.tensor(
        [[note["scores"][c][k] * weights.get(k, 1.0) for k in ranks] for c in ranks], dtype=torch.float64
    )
    if per_token is not None:
        matrix = matrix / torch.tensor([[max(per_token[c], 1)] for c in ranks], dtype=torch.float64)
    return ranks[joint_pick(matrix)]


Condition = tuple[str, str, float]
"""(signal, ">=" or "<=", threshold): which utterances a conditional rule lets the base model vote on."""


def parse_condition(text: str) -> Condition:
    """``"snr_db>=15"`` -> ("snr_db", ">=", 15.0); ValueError for anything else."""
    for op in (">=", "<="):
        name, sep, value = text.partition(op)
        if sep:
            try:
                return name.strip(), op, float(value)
            except ValueError:
                break
    raise ValueError(f"a condition is SIGNAL>=T or SIGNAL<=T (e.g. snr_db>=15), got {text!r}")


def meets(utt: dict[str, Any], condition: Condition) -> bool:
    """Whether ``utt``'s stored routing signal meets ``condition`` (ConfigError naming it if absent)."""
    name, op, threshold = condition
    value = (utt.get("signals") or {}).get(name)
    if value is None:
        raise ConfigError(f"utterance {utt.get('id')} has no stored signal {name!r}")
    return value >= threshold if op == ">=" else value <= threshold


def served(note: dict[str, Any], rank: str, fallback: Fallback | None) -> str:
    """The transcript served for the picked ``rank``, after eval's loop fallback (its rule,
    ``offline_fallback``) where the note holds the fallback rank's transcript."""
    text = note["hyps"][rank]
    second = note["hyps"].get(str(fallback.rank)) if fallback is not None else None
    if second is None:
        return text
    return offline_fallback([text], [second], [int(rank)], fallback)[0][0]


def readings(
    run: dict[str, Any],
    weights: Sequence[float],
    count_tokens: Callable[[str], int] | None,
    wers: dict[float, float] | None = None,
    conditions: Sequence[Condition] = (),
) -> list[str]:
    """Markdown rows: each rule's WER, utterances served the base transcript, and the pair
    against what eval served. ``wers``, if given, gets each weight's WER (%); each of
    ``conditions`` adds a rule where the base model votes only where it holds."""
    normalize = source_normalizer(run.get("model") or "whisper-tiny.en")
    stored_fallback = run.get("fallback")
    fallback = (
        Fallback(stored_fallback["rank"], stored_fallback.get("threshold", DEFAULT_THRESHOLD))
        if stored_fallback
        else None
    )
    utts = run["utterances"]
    refs = [u["ref"] for u in utts]
    stored = [u["hyp"] for u in utts]
    scored = {u["id"]: u["joint"] for u in scored_rows(run)}

    def errors(ref: str, hyp: str) -> int:
        c = error_counts([ref], [hyp], normalize)
        return c["sub"] + c["del"] + c["ins"]

    # (label, the weight when the rule is a weighted sum, the rule: utterance, note -> rank)
    Rule = Callable[[dict[str, Any], dict[str, Any]], str]
    rules: list[tuple[str, float | None, Rule]] = [
        (f"sum, base weight {w:g}", w, lambda u, note, w=w: pick(note, {"0": w})) for w in weights
    ]
    for name, op, threshold in conditions:
        rules.append(
            (
                f"base votes where {name}{op}{threshold:g}",
                None,
                lambda u, note, c=(name, op, threshold): pick(note, {"0": 1.0 if meets(u, c) else 0.0}),
            )
        )
    if count_tokens is not None:
        rules.append(
            (
                "per token",
                None,
                lambda u, note: pick(note, {}, {c: count_tokens(note["hyps"][c]) for c in note["hyps"]}),
            )
        )
    out = []
    for label, weight, rule in rules:
        hyps, base = [], 0
        for u in utts:
            note = scored.get(u["id"])
            if note is None:
                hyps.append(u["hyp"])
                continue
            rank = rule(u, note)
            base += rank == "0"
            hyps.append(served(note, rank, fallback))
        wer = 100 * error_counts(refs, hyps, normalize)["wer"]
        if wers is not None and weight is not None:
            wers[weight] = wer
        pairs = [(errors(r, a), errors(r, b)) for r, a, b in zip(refs, stored, hyps) if a != b]
        better, worse = sum(b < a for a, b in pairs), sum(b > a for a, b in pairs)
        p = sign_test(better, worse)
        out.append(f"| {label} | {wer:.1f} | {base} | {better} / {worse}, p = {p:.2g} |")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("evals", nargs="+", type=Path, help="evaluations run with --joint-ranks")
    parser.add_argument(
        "--weights",
        default="0,0.25,0.5,0.75,1",
        help="base-model score weights to read (default 0,0.25,0.5,0.75,1)",
    )
    parser.add_argument("--no-per-token", action="store_true", help="skip the per-token rule (no tokenizer)")
    parser.add_argument(
        "--budget",
        type=float,
        metavar="POINTS",
        help="also name the largest weight whose WER is at most POINTS above the smallest weight's "
        "(run it on a validation evaluation)",
    )
    parser.add_argument(
        "--where",
        default="",
        metavar="CONDITIONS",
        help="comma-separated SIGNAL>=T or SIGNAL<=T (e.g. snr_db>=15,proxy_entropy<=0.8): a rule "
        "each, the base model voting only on utterances whose stored routing signal meets it",
    )
    args = parser.parse_args(argv)
    weights = [float(w) for w in args.weights.split(",")]
    try:
        conditions = [parse_condition(c) for c in args.where.split(",") if c.strip()]
    except ValueError as error:
        parser.error(str(error))
    for path in args.evals:
        run = load_run(path)
        if not scored_rows(run):
            parser.error(f"{path}: no utterance has joint-pick scores (was it run with --joint-ranks?)")
        count_tokens = None
        if not args.no_per_token:
            from flexispeech.models.whisper import FAMILY

            _, processor = FAMILY.load(run.get("model") or "whisper-tiny.en")

            def count_tokens(text: str, processor: Any = processor) -> int:
                return int((FAMILY.labels(processor, [text]) != -100).sum())

        stored = 100 * run["overall"]["wer"]
        print(
            f"\n{run.get('name', path)} ({len(run['utterances'])} utterances, {len(scored_rows(run))} scored; "
            f"eval served {stored:.1f} % WER)\n"
        )
        print(
            "| rule | WER % | scored utterances served the base transcript | against what eval served: better / worse |"
        )
        print("| --- | --- | --- | --- |")
        wers: dict[float, float] = {}
        try:
            print("\n".join(readings(run, weights, count_tokens, wers, conditions)))
        except ConfigError as error:  # a condition on a signal the evaluation did not store
            parser.error(f"{path}: {error}")
        if args.budget is not None:
            floor = wers[min(wers)]
            chosen = max(w for w, wer in wers.items() if wer <= floor + args.budget)
            print(
                f"\nlargest base weight within {args.budget:g} points of weight {min(wers):g}'s "
                f"{floor:.1f} %: {chosen:g}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
