"""What a stricter novelty gate would have changed, from evaluations already made and a
corpus's cached embeddings: no decoding.

    flexispeech signals data/real --splits test --model whisper-tiny.en --embedding-only
    python recipes/synthetic/novelty_gate_offline.py --gate exp/.../flexi_benefit_nscale_gated/adapter \\
        --data data/real --split test \\
        --run exp/.../flexi_benefit_nscale/eval_real exp/.../base/eval_real \\
        --threshold 2.0 1.5 1.0 --check exp/.../flexi_benefit_nscale_gated/eval_real

The gate in ``--gate`` (a gated adapter's ``router.json``: the novelty gate on the pooled
base-encoder embedding and, if it has one, the confidence gate) scores every utterance of
``--data``'s split from its cached ``signal_embedding``. For the gate's own threshold and
each ``--threshold T``, a row passes when its novelty score is at most T and the
confidence gate does not catch it; a passing row scores ``ADAPTER_EVAL``'s hypothesis, any
other the base model's (``BASE_EVAL``), which is what decoding the gated adapter gives
(``gate_offline.py`` says why). The question it answers: do the rows a stricter gate would
still let through fare better with the adapter than the rows it would stop?

``--check GATED_EVAL``: an end-to-end evaluation of the gated adapter on the same split;
the gate at its own threshold must send exactly its rank-0 rows to rank 0 (else the
embeddings are not the ones the gate was fit on, e.g. another base model or window).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from flexispeech.data.text import open_split
from flexispeech.evaluation.paired import sign_test
from flexispeech.evaluation.report import load_run
from flexispeech.lora.gate import EMBEDDING, ConfidenceGate, NoveltyGate


def _gates(adapter: Path) -> tuple[NoveltyGate, ConfidenceGate | None]:
    path = adapter / "router.json"
    if not path.is_file():
        raise SystemExit(f"{adapter}: no router.json (not a gated adapter)")
    saved = json.loads(path.read_text())
    if saved.get("type") != "gated" or not saved.get("gate"):
        raise SystemExit(f"{path}: not a router with a novelty gate (type {saved.get('type')!r})")
    confident = saved.get("confident")
    return NoveltyGate.from_dict(saved["gate"]), ConfidenceGate.from_dict(confident) if confident else None


def _with_embeddings(data: str, name: str):
    """The split ``name`` of ``data``, or None (said on stderr) when it has no cached embedding."""
    split = open_split(data, name)
    if EMBEDDING in split.signal_names:
        return split
    print(
        f"{data}: split {name!r} has no cached embedding; run `flexispeech signals {data} --splits "
        f"{name} --embedding-only --model <the adapter's base model>` first",
        file=sys.stderr,
    )
    return None


def _records(path: Path) -> dict[str, dict]:
    return {str(u["id"]): u for u in load_run(path)["utterances"] if u.get("errors") is not None}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--gate", type=Path, required=True, help="a gated adapter (its router.json)")
    parser.add_argument("--data", required=True, help="the corpus the evaluations were made on")
    parser.add_argument("--split", default="test")
    parser.add_argument("--run", nargs=2, type=Path, required=True, metavar=("ADAPTER_EVAL", "BASE_EVAL"))
    parser.add_argument("--threshold", type=float, nargs="*", default=[], help="novelty thresholds to try")
    parser.add_argument("--check", type=Path, help="the gated adapter's own evaluation of the split")
    parser.add_argument(
        "--in-domain",
        nargs=2,
        metavar=("CORPUS", "SPLIT"),
        help="a split of the training domain with cached embeddings: the share of it each threshold stops",
    )
    args = parser.parse_args(argv)

    novelty, confident = _gates(args.gate)
    split = _with_embeddings(args.data, args.split)
    reference = None
    if args.in_domain is not None:
        in_domain = _with_embeddings(*args.in_domain)
        if split is not None and in_domain is not None:
            reference = novelty.score(torch.as_tensor(in_domain.all_signals()[EMBEDDING])).numpy()
    if split is None or (args.in_domain is not None and reference is None):
        return 2
    signals = split.all_signals()
    ids = [str(r["id"]) for r in split.rows]
    score = dict(zip(ids, novelty.score(torch.as_tensor(signals[EMBEDDING])).tolist()))
    adapter, base = _records(args.run[0]), _records(args.run[1])
    rows = [i for i in ids if i in adapter and i in base]
    if not rows:
        print(
            f"{args.run[0]} and {args.run[1]} share no utterance with {args.data} {args.split}",
            file=sys.stderr,
        )
        return 2
    s = np.array([score[i] for i in rows])
    gated = _records(args.check) if args.check is not None else {}
    caught = np.zeros(len(rows), dtype=bool)
    if confident is not None:
        # the base model's confidence, from the corpus's cache or from whichever evaluation
        # recorded it (a gated evaluation computes it while decoding)
        known = dict(zip(ids, signals[confident.signal].tolist())) if confident.signal in signals else {}
        for records in (gated, adapter, base):
            for i, u in records.items():
                value = u.get("signals", {}).get(confident.signal)
                if value is not None and np.isfinite(value):
                    known.setdefault(i, float(value))
        values = np.array([known.get(i, np.nan) for i in rows])
        if np.isnan(values).any():
            print(
                f"{int(np.isnan(values).sum())} rows have no {confident.signal} (the gate's confidence "
                f"signal) in {args.data} or the evaluations: cache it with `flexispeech signals "
                f"{args.data} --splits {args.split} --model <the base model>`",
                file=sys.stderr,
            )
            return 2
        caught = values < confident.threshold
    delta = np.array([adapter[i]["errors"] - base[i]["errors"] for i in rows])  # > 0: the adapter is worse
    words = sum(base[i]["ref_words"] for i in rows)
    base_errors = sum(base[i]["errors"] for i in rows)
    print(
        f"{args.data} {args.split}: {len(rows)} utterances; novelty score quantiles 5/25/50/75/95 %: "
        + " / ".join(f"{v:.2f}" for v in np.percentile(s, [5, 25, 50, 75, 95]))
        + f"; {int(caught.sum())} caught by the confidence gate; base WER {100 * base_errors / words:.2f} %"
    )
    if args.check is not None:
        expect = {i for i, t, c in zip(rows, s, caught) if t <= novelty.threshold and not c}
        served = {i for i in rows if i in gated and gated[i]["rank"] > 0}
        if expect != served:
            print(
                f"--check: {len(expect ^ served)} of {len(rows)} rows gated differently from {args.check}",
                file=sys.stderr,
            )
            return 1
        print(f"--check: the gate passes the same {len(served)} rows as {args.check}")
    for t in [novelty.threshold, *args.threshold]:
        through = (s <= t) & ~caught
        d = delta[through]
        better, worse = int((d < 0).sum()), int((d > 0).sum())
        print(
            f"threshold {t:.3g}{' (the gate)' if t == novelty.threshold else ''}: {int(through.sum())} rows "
            f"to the adapter, WER {100 * (base_errors + d.sum()) / words:.2f} %; against the base {better} "
            f"better, {worse} worse, {int(d.sum()):+d} errors, sign test p = {sign_test(better, worse):.2g}"
            + (
                ""
                if reference is None
                else f"; stops {100 * (reference > t).mean():.1f} % of {' '.join(args.in_domain)}"
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
