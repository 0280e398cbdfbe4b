"""An adapter behind a gate, composed from evaluations already made: no model, no audio.

    python recipes/synthetic/gate_offline.py ADAPTER_EVAL BASE_EVAL --gate-from GATED_EVAL \\
        --name flexi_benefit_nscale_seed1_gated --out exp/.../flexi_benefit_nscale_seed1_gated/eval_test

The gates ``flexispeech gate`` fits (novelty of the base encoder's pooled embedding,
the base decoder's entropy) read only base-model signals, and their thresholds come from
the corpus, not the adapter: every adapter gated on one corpus sends the same rows to
rank 0. So ``GATED_EVAL``, any gated evaluation of the split (e.g. static LoRA behind the
gate), says which rows the gate sends to rank 0; those rows score ``BASE_EVAL``'s hypothesis
and the others ``ADAPTER_EVAL``'s, which is what decoding the gated adapter end to end gives
up to batch-padding effects (``--check GATED_OF_THIS_ADAPTER`` counts the rows that differ
from an end-to-end evaluation, where one exists).

The result is written as an evaluation (results.json with ``composed`` naming its sources,
no decoding time) that ``flexispeech compare`` reads like any other.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

from flexispeech.evaluation.evaluate import summarize, write_results
from flexispeech.evaluation.metrics import source_normalizer
from flexispeech.evaluation.report import load_run


def compose(
    adapter: dict[str, Any], base: dict[str, Any], gated: dict[str, Any], name: str
) -> dict[str, Any]:
    """The evaluation of ``adapter`` behind ``gated``'s gate: rows ``gated`` decoded at rank 0
    take ``base``'s record (rank 0), the others ``adapter``'s. Every run must hold the same
    utterances (one split)."""
    runs = {"adapter": adapter, "base": base, "gate": gated}
    by_id = {k: {u["id"]: u for u in r["utterances"]} for k, r in runs.items()}
    ids = list(by_id["adapter"])
    for key, rows in by_id.items():
        if set(rows) != set(ids):
            missing = sorted(set(ids) ^ set(rows))
            raise ValueError(
                f"{runs[key].get('name', key)} and {adapter.get('name')} hold different utterances "
                f"({len(missing)} differ, first {missing[0]}): not one split"
            )
    records = []
    for i in ids:
        closed = by_id["gate"][i]["rank"] == 0
        src = dict(by_id["base" if closed else "adapter"][i])
        src["rank"] = 0 if closed else src["rank"]
        records.append(src)
    result = summarize(
        records, source_normalizer(adapter.get("model") or "whisper-tiny.en"), math.nan, name=name
    )
    result.update(
        {k: adapter.get(k) for k in ("model", "split", "data", "audio_ctx", "fallback") if k in adapter}
    )
    # LoRA's parameters grow linearly with the rank, so the adapter's active parameters per
    # unit of mean rank price the composed run's mean rank (summarize has no model to count)
    if adapter.get("mean_rank"):
        per_rank = adapter["active_params_mean"] / adapter["mean_rank"]
        result["active_params_mean"] = per_rank * result["mean_rank"]
        result["adapter_params_total"] = adapter.get("adapter_params_total", 0)
    result["router"] = f"{gated.get('router', 'gate')} with the adapter of {adapter.get('name')}"
    result["composed"] = {
        "adapter": adapter.get("name"),
        "base": base.get("name"),
        "gate_from": gated.get("name"),
    }
    return result


def differing_rows(composed: dict[str, Any], end_to_end: dict[str, Any]) -> tuple[int, int]:
    """(rows whose rank differs, rows whose hypothesis differs) between two evaluations."""
    other = {u["id"]: u for u in end_to_end["utterances"]}
    rows = [(u, other[u["id"]]) for u in composed["utterances"] if u["id"] in other]
    return sum(a["rank"] != b["rank"] for a, b in rows), sum(a["hyp"] != b["hyp"] for a, b in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("adapter", type=Path, help="the adapter's evaluation (results.json or its folder)")
    parser.add_argument("base", type=Path, help="the base model's evaluation of the same split")
    parser.add_argument("--gate-from", type=Path, required=True, help="a gated evaluation of the split")
    parser.add_argument("--name", required=True, help="the composed run's name")
    parser.add_argument("--out", type=Path, required=True, help="folder for results.json")
    parser.add_argument("--check", type=Path, help="an end-to-end evaluation of this gated adapter")
    args = parser.parse_args(argv)
    try:
        result = compose(load_run(args.adapter), load_run(args.base), load_run(args.gate_from), args.name)
        check = differing_rows(result, load_run(args.check)) if args.check else None
    except (OSError, KeyError, ValueError) as err:
        print(f"gate_offline: {err}", file=sys.stderr)
        return 2
    write_results(result, args.out)
    closed = result["rank_histogram"].get("0", 0)  # rank_summary keys the histogram by str(rank)
    print(
        f"{args.name}: WER {100 * result['overall']['wer']:.2f} % on {result['n']} utterances, "
        f"{closed} at rank 0, mean rank {result['mean_rank']:.2f} -> {args.out}"
    )
    if check is not None:
        print(f"  against {args.check}: {check[0]} rows at another rank, {check[1]} other hypotheses")
    return 0


if __name__ == "__main__":
    sys.exit(main())
