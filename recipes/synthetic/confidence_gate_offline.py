"""What the confidence gate (``flexispeech gate --confident-share Q``) would have changed,
from evaluations already made: no model, no audio.

    python recipes/synthetic/confidence_gate_offline.py --share 0.05 0.1 0.2 \\
        --threshold-from exp/.../base/eval_validation \\
        --run exp/.../static_r16/eval_test exp/.../base/eval_test \\
        --run exp/.../static_r16/eval_real exp/.../base/eval_real --signals data/real

Each ``--run ADAPTER_EVAL BASE_EVAL`` pair is one split evaluated with the adapter and with
the base model; a row the gate catches (the base model's decoder entropy below the
threshold) scores the base model's hypothesis instead of the adapter's. The threshold of
share Q is the Q quantile of the entropies in ``--threshold-from`` (an evaluation whose
records carry the ``proxy_entropy`` signal: the held-out split ``gate`` itself reads).
``--signals DIR``: corpora whose cached signals fill in rows of evaluations that did not
record the entropy (real speech evaluated without model signals).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from flexispeech.evaluation.paired import sign_test
from flexispeech.evaluation.report import load_run

SIGNAL = "proxy_entropy"


def _records(path: Path) -> tuple[str, list[dict]]:
    data = load_run(path)  # the file or its folder, with a one-line error when missing
    return data.get("name", str(path)), [u for u in data["utterances"] if u.get("errors") is not None]


def _cached(dirs: list[str]) -> dict[str, float]:
    """Utterance id -> cached entropy, from the corpora ``dirs`` (every split)."""
    from flexispeech.data.speech import CorpusSplit
    from flexispeech.data.text import open_split

    out: dict[str, float] = {}
    for d in dirs:
        info = json.loads((Path(d) / "corpus.json").read_text())
        for name in info["splits"]:
            split = open_split(d, name)
            if isinstance(split, CorpusSplit) and SIGNAL in split.signal_names:
                values = split.all_signals()[SIGNAL].tolist()
                out.update({str(r["id"]): v for r, v in zip(split.rows, values)})
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--share", type=float, nargs="+", required=True, help="shares Q to try")
    parser.add_argument("--threshold-from", type=Path, required=True, help="evaluation whose entropies set Q")
    parser.add_argument(
        "--run", nargs=2, type=Path, action="append", required=True, metavar=("ADAPTER", "BASE")
    )
    parser.add_argument("--signals", nargs="*", default=[], help="corpora with cached entropies")
    args = parser.parse_args(argv)
    cached = _cached(args.signals)

    def entropy(u: dict) -> float:
        value = u.get("signals", {}).get(SIGNAL, cached.get(str(u["id"])))
        return float("nan") if value is None else float(value)

    _, reference = _records(args.threshold_from)
    ref = np.array([entropy(u) for u in reference])
    ref = ref[np.isfinite(ref)]
    if ref.size == 0:
        print(f"{args.threshold_from}: no {SIGNAL} in its records", file=sys.stderr)
        return 2
    for adapter_path, base_path in args.run:
        name, rows = _records(adapter_path)
        _, base_rows = _records(base_path)
        base = {u["id"]: u for u in base_rows}
        rows = [u for u in rows if u["id"] in base]
        words = sum(u["ref_words"] for u in rows)
        ent = np.array(
            [
                entropy(base[u["id"]]) if SIGNAL in base[u["id"]].get("signals", {}) else entropy(u)
                for u in rows
            ]
        )
        plain = sum(u["errors"] for u in rows)
        base_errors = sum(base[u["id"]]["errors"] for u in rows)
        print(
            f"{name} on {adapter_path} ({len(rows)} utterances, {int(np.isfinite(ent).sum())} with {SIGNAL}, "
            f"median {np.nanmedian(ent):.2f}; --threshold-from median {np.median(ref):.2f}):"
        )
        print(f"  adapter {100 * plain / words:.2f} %, base {100 * base_errors / words:.2f} %")
        for q in args.share:
            threshold = float(np.quantile(ref, q))
            caught = ent < threshold
            gated = [base[u["id"]]["errors"] if c else u["errors"] for u, c in zip(rows, caught)]
            better = sum(g < u["errors"] for g, u in zip(gated, rows))
            worse = sum(g > u["errors"] for g, u in zip(gated, rows))
            print(
                f"  share {q:g} (entropy < {threshold:.3f}): {100 * caught.mean():.1f} % at rank 0, "
                f"WER {100 * sum(gated) / words:.2f} %; against the adapter {better} better, {worse} worse, "
                f"sign test p = {sign_test(better, worse):.2g}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
