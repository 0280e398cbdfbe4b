"""``flexispeech gate``: serve the base model (rank 0) to inputs unlike the adapter's training data."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flexispeech.lora.router_base import Router

HELP = (
    "put a novelty gate in front of an adapter's router: inputs whose pooled base-encoder "
    "embedding lies farther from the training split's than a held-out quantile are served at rank 0; "
    "with --confident-share also inputs the base model decodes with more confidence than that share "
    "of held-out ones"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("adapter", help="adapter directory (from `flexispeech train` or `calibrate`)")
    parser.add_argument(
        "--data",
        help="the corpus the adapter was trained on, with cached embeddings "
        "(`flexispeech signals CORPUS --embedding --model BASE`); needed unless --gate-from",
    )
    parser.add_argument(
        "--gate-from",
        metavar="GATED_ADAPTER",
        help="take the gates of another gated adapter of the same base model instead of fitting "
        "them: they read only the base model's signals, with thresholds set on the corpus, so one "
        "fit serves every adapter trained on that corpus (no --data needed)",
    )
    parser.add_argument(
        "--fit-split", default="train", help="split whose embeddings define 'in domain' (default: train)"
    )
    parser.add_argument(
        "--split",
        default="validation",
        help="held-out split the threshold is set on (default: validation; never the test split)",
    )
    parser.add_argument(
        "--quantile",
        type=float,
        default=0.99,
        help="share of held-out utterances the gate lets through to the router (default: 0.99)",
    )
    parser.add_argument(
        "--components",
        type=int,
        default=32,
        help="principal directions of the embedding's covariance kept (default: 32; the rest is one variance)",
    )
    parser.add_argument(
        "--max-examples",
        type=int,
        default=5000,
        help="fit on at most this many utterances of --fit-split (a seeded sample; default: 5000)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of that sample (default: 0)")
    parser.add_argument(
        "--confident-share",
        type=float,
        default=0.0,
        metavar="Q",
        help="also serve rank 0 where the base model is surer of its own transcript than on the "
        "surest Q of --split (its decoder entropy, `flexispeech signals --model`); the base model "
        "transcribes such inputs well already (default: 0, off)",
    )
    parser.add_argument(
        "--confident-signal",
        default="proxy_entropy",
        choices=("proxy_entropy", "proxy"),
        help="the base model's confidence: decoder entropy (default) or the negative log-probability",
    )
    parser.add_argument(
        "--no-novelty",
        action="store_true",
        help="no novelty gate: the confidence gate only (needs --confident-share; no embeddings read)",
    )
    parser.add_argument(
        "--out",
        help="write the gated adapter here (default: replace the router of ADAPTER in place; "
        "the weights are unchanged)",
    )


def run(args: argparse.Namespace) -> int:
    from flexispeech.data.text import open_split
    from flexispeech.errors import ConfigError
    from flexispeech.lora.gate import EMBEDDING, ConfidenceGate, GatedRouter, NoveltyGate
    from flexispeech.lora.io import read_router

    if args.gate_from:
        return _gate_from(args)
    if not args.data:
        raise ConfigError("give --data (the corpus to fit the gate on) or --gate-from (a gated adapter)")
    if args.split == "test" or args.fit_split == "test":
        raise ConfigError(
            "gate: fit and set the threshold on training and held-out splits, never on the test split"
        )
    if args.fit_split == args.split:
        raise ConfigError(
            f"gate: --split must differ from --fit-split ({args.split!r}): the threshold needs held-out data"
        )
    if not 0.0 < args.quantile <= 1.0:
        raise ConfigError(f"--quantile: expected a share in (0, 1], got {args.quantile}")
    if args.components < 1 or args.max_examples < 2:
        raise ConfigError("--components must be >= 1 and --max-examples >= 2")
    if not 0.0 <= args.confident_share < 1.0:
        raise ConfigError(f"--confident-share: expected a share in [0, 1), got {args.confident_share}")
    if args.no_novelty and args.confident_share == 0:
        raise ConfigError("--no-novelty leaves no gate: give --confident-share too")
    router = read_router(args.adapter)

    def cached(name: str, split_name: str, max_examples: int | None = None):
        """The cached signal ``name`` of a split (the embedding [N, D], a confidence [N]);
        a split without it names the command that caches it."""
        split = open_split(args.data, split_name, max_examples=max_examples, seed=args.seed)
        if name not in split.signal_names:
            what, flag = ("embedding", " --embedding") if name == EMBEDDING else (repr(name), "")
            raise ConfigError(
                f"{args.data}: split {split_name!r} has no cached {what}; run `flexispeech signals "
                f"{args.data} --splits {split_name}{flag} --model <the adapter's base model>` first"
            )
        return split.all_signals()[name]

    summary: dict = {"adapter": str(args.adapter), "data": args.data, "split": args.split}
    gate = confident = None
    if not args.no_novelty:
        fit = cached(EMBEDDING, args.fit_split, args.max_examples)
        heldout = cached(EMBEDDING, args.split)
        gate = NoveltyGate.fit(fit, components=args.components)
        threshold = gate.set_threshold(heldout, args.quantile)
        summary |= {
            "fit_split": args.fit_split,
            "fit_examples": int(fit.shape[0]),
            "heldout_examples": int(heldout.shape[0]),
            "components": int(gate.components.shape[0]),
            "quantile": args.quantile,
            "threshold": threshold,
            "novel_share_fit": float(gate.novel(fit).float().mean()),
            "novel_share_heldout": float(gate.novel(heldout).float().mean()),
        }
        print(
            f"novelty gate on {summary['fit_examples']} {args.fit_split} embeddings ({summary['components']} "
            f"directions): threshold {threshold:.3g} at the {args.quantile:g} quantile of {args.split}; "
            f"novel: {100 * summary['novel_share_fit']:.1f} % of {args.fit_split}, "
            f"{100 * summary['novel_share_heldout']:.1f} % of {args.split}"
        )
    if args.confident_share > 0:
        values = cached(args.confident_signal, args.split)
        confident = ConfidenceGate.at_share(args.confident_signal, values, args.confident_share)
        summary |= {"confident": confident.to_dict()}
        print(
            f"confidence gate: {args.confident_signal} < {confident.threshold:.3g}, the surest "
            f"{100 * args.confident_share:g} % of {args.split}"
        )
    return _save(args, GatedRouter(router, gate, confident=confident), summary)


def _save(args: argparse.Namespace, gated: Router, summary: dict, note: str = "") -> int:
    """Save ``gated`` as the adapter's router (into ``--out`` or in place) with
    ``gate_<out>.json`` beside it (``summary``, the output and the router), and say so."""
    import json
    from pathlib import Path

    from flexispeech.atomic import write_text
    from flexispeech.lora.io import save_router

    out = save_router(args.adapter, gated, args.out)
    summary |= {"out": str(out), "router": gated.describe()}
    write_text(Path(out).parent / f"gate_{Path(out).name}.json", json.dumps(summary, indent=2) + "\n")
    print(f"{gated.describe()}{note} -> {out}")
    return 0


def _gate_from(args: argparse.Namespace) -> int:
    """The gates of ``args.gate_from`` around ``args.adapter``'s own router (unwrapped
    when it is gated already)."""
    from flexispeech.errors import ConfigError
    from flexispeech.export.merged import base_source
    from flexispeech.lora.gate import GatedRouter
    from flexispeech.lora.io import read_router

    if args.data:  # nothing is fitted: a corpus given anyway is a sign of a mix-up, not used silently
        raise ConfigError("--gate-from takes the gates as they are: --data is not used; give one of the two")
    donor = read_router(args.gate_from)
    if not isinstance(donor, GatedRouter):
        raise ConfigError(f"{args.gate_from}: its router is not gated ({donor.describe()}): nothing to take")
    ours, theirs = base_source(args.adapter), base_source(args.gate_from)
    if ours != theirs:  # the gates' thresholds are in that base model's embedding and entropy
        raise ConfigError(
            f"--gate-from: {args.gate_from} was gated for base model {theirs!r}, {args.adapter} "
            f"adapts {ours!r}: fit a gate with --data instead"
        )
    gated = GatedRouter(read_router(args.adapter), donor.gate, donor.fallback_rank, donor.confident)
    summary = {"adapter": str(args.adapter), "gate_from": str(args.gate_from)}
    return _save(args, gated, summary, f" (gates of {args.gate_from})")
