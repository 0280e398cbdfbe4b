"""``flexispeech scale ADAPTER --strength S [--modules REGEX] --out DIR``: the adapter at a
fraction of its strength, or a part of it."""

from __future__ import annotations

import argparse

HELP = (
    "write a copy of an adapter served at a fraction of its strength (every rank's scale times S: "
    "the model moved only part of the way from the base model to the fine-tuned one, as WiSE-FT "
    "does); eval, transcribe, stream, serve and export read it like any adapter"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("adapter", metavar="ADAPTER", help="a saved adapter directory")
    parser.add_argument(
        "--strength",
        type=float,
        required=True,
        metavar="S",
        help="multiplier of every rank's scale, > 0 (0.5: half way between the base model and the "
        "adapter; 1: unchanged); with --modules >= 0",
    )
    parser.add_argument(
        "--modules",
        metavar="REGEX",
        help="scale only the adapted modules whose names match (searched, as re.search): their B "
        "matrices times S, and S may be 0 to switch them off, e.g. --modules decoder --strength 0 "
        "serves the encoder's adapters alone",
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="where to write the scaled adapter")


def run(args: argparse.Namespace) -> int:
    from flexispeech.lora.io import read_adapter_config
    from flexispeech.lora.strength import save_strength

    out = save_strength(args.adapter, args.strength, args.out, modules=args.modules)
    meta = read_adapter_config(out)["config"]["metadata"]
    if args.modules is None:
        print(f"{args.adapter} at strength {meta['strength']:g} -> {out}")
    else:
        n = meta["module_strengths"][args.modules]["modules"]
        print(f"{args.adapter}: {n} modules matching {args.modules!r} at strength {args.strength:g} -> {out}")
    return 0
