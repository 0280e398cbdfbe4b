"""``flexispeech export ADAPTER OUT --to {merged,peft,ct2}``: an adapter ready for deployment."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

HELP = "export an adapter: a merged transformers model, a PEFT LoRA, or a CTranslate2 (faster-whisper) model"

DESCRIPTION = f"""{HELP}.

--to merged  a transformers directory with the adapter folded in at --rank (processor and
             generation config included): from_pretrained(OUT) loads it without flexispeech.
--to peft    a PEFT LoRA at --rank: peft.PeftModel.from_pretrained(base, OUT).
--to ct2     a CTranslate2 Whisper directory made by CTranslate2's converter from the merged
             model, with tokenizer.json and preprocessor_config.json:
             faster_whisper.WhisperModel(OUT) or ctranslate2.models.Whisper(OUT).
--per-rank   one merged (or ct2) model per rank of the adapter in OUT/rank-<r>/ and
             OUT/routing.json (the adapter's router and rank -> directory), so that a
             deployment routes each request to a model that runs at the base model's speed.

Greedy decoding of a float32 export gives the tokens of
`flexispeech transcribe --adapter ADAPTER --rank R`. OUT must not exist or be empty; it is
written into a temporary sibling and renamed at the end."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """ADAPTER, OUT, --to, --rank / --per-rank, --quantization, --model."""
    from flexispeech.export.ct2 import QUANTIZATIONS
    from flexispeech.export.exporter import TARGETS

    parser.description = DESCRIPTION
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("adapter", type=Path, metavar="ADAPTER", help="a saved Flexi-LoRA adapter directory")
    parser.add_argument(
        "out", type=Path, metavar="OUT", help="directory to create (must not exist or be empty)"
    )
    parser.add_argument("--to", required=True, choices=TARGETS, help="what to write")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--rank", type=int, help="the rank to export (default: the adapter's largest)")
    group.add_argument(
        "--per-rank", action="store_true", help="one model per rank plus routing.json (merged, ct2)"
    )
    parser.add_argument(
        "--quantization",
        choices=QUANTIZATIONS,
        help="CTranslate2 weight type for --to ct2 (default float32: exact)",
    )
    parser.add_argument(
        "--model", help="the base model (default: the one recorded in the adapter, else whisper-tiny.en)"
    )


def run(args: argparse.Namespace) -> int:
    """Export and print what was written, with the time taken."""
    from flexispeech.export import export_adapter, read_routing
    from flexispeech.lora.io import read_adapter_config

    start = time.perf_counter()
    out = export_adapter(
        args.adapter,
        args.out,
        args.to,
        rank=args.rank,
        per_rank=args.per_rank,
        quantization=args.quantization,
        model=args.model,
    )
    what = args.to + (f" ({args.quantization or 'float32'})" if args.to == "ct2" else "")
    if args.per_rank:
        ranks = sorted(read_routing(out).models)
        print(f"{out}: {what} models for ranks {ranks} + routing.json in {time.perf_counter() - start:.1f} s")
    else:
        rank = (
            args.rank if args.rank is not None else read_adapter_config(args.adapter)["config"]["ranks"][-1]
        )
        print(f"{out}: {what} at rank {rank} in {time.perf_counter() - start:.1f} s")
    return 0
