"""``flexispeech transcribe AUDIO...``: one transcript per file, at routed or fixed ranks."""

from __future__ import annotations

import argparse
import sys

from flexispeech.commands import options
from flexispeech.models.whisper import DEFAULT_SOURCE, FULL_POSITIONS, POSITIONS_PER_SECOND

HELP = "transcribe audio files with a speech model, optionally through a Flexi-LoRA adapter"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("audio", nargs="+", metavar="AUDIO", help="audio files (anything soundfile reads)")
    parser.add_argument(
        "--model",
        default=DEFAULT_SOURCE,
        help="model name, transformers directory or hub id; 'random:tiny' for a random test model "
        f"(default: {DEFAULT_SOURCE})",
    )
    parser.add_argument("--family", choices=("whisper", "wav2vec2"), help="model family (default: detected)")
    parser.add_argument("--adapter", metavar="DIR", help="a saved Flexi-LoRA adapter directory")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--rank", type=int, help="serve every file at this adapter rank")
    group.add_argument(
        "--router",
        choices=("auto",),
        help="'auto': route each file with the router saved with the adapter (the default when it has one)",
    )
    parser.add_argument(
        "--beam", type=options.positive_int, default=1, metavar="N", help="beam size (default 1: greedy)"
    )
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument(
        "--json", action="store_true", help="print JSON lines: path, text, rank, duration, signals"
    )
    parser.add_argument(
        "--audio-ctx",
        type=int,
        metavar="N",
        help=f"Whisper encoder window in positions of {1000 // POSITIONS_PER_SECOND} ms (e.g. 500 = 10 s; "
        "default: the window the adapter was trained with, a warning when it differs; "
        f"{FULL_POSITIONS} = {FULL_POSITIONS // POSITIONS_PER_SECOND} s without an adapter)",
    )
    parser.add_argument(
        "--batch-size", type=options.positive_int, default=8, help="files decoded together (default 8)"
    )
    parser.add_argument(
        "--max-new-tokens", type=options.positive_int, help="cap on tokens per window (default: the model's)"
    )
    options.add_fallback_options(
        parser,
        "transcribe a file again at adapter rank R when its transcript loops (gzip compression "
        "ratio over --compression-ratio, Whisper's hallucination test) and keep the one that "
        "loops less, as `flexispeech eval --fallback-rank R` scores it; 0 is the base model. "
        "Needs --adapter (default: off)",
    )
    parser.add_argument(
        "--joint-ranks",
        metavar="R,R,...",
        help=options.JOINT_HELP + "; serves what `flexispeech eval --joint-ranks` scores",
    )
    parser.add_argument("--joint-base-weight", type=float, metavar="W", help=options.JOINT_WEIGHT_HELP)


def run(args: argparse.Namespace) -> int:
    from transformers.utils import logging as hf_logging

    from flexispeech.errors import AudioError
    from flexispeech.streaming.transcriber import Transcriber

    # Our output is the transcripts: keep transformers' load bars and advice off stderr.
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    joint = options.rank_list(args.joint_ranks, "--joint-ranks", least=1)
    transcriber = Transcriber(
        model=args.model,
        adapter=args.adapter,
        rank=args.rank,
        router=args.router,
        num_beams=args.beam,
        device=args.device,
        family=args.family,
        audio_ctx=args.audio_ctx,
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        fallback=options.fallback(args),
        joint=joint,
        joint_weights=options.base_weight(args.joint_base_weight, joint),
    )
    failed = 0
    for result in transcriber.transcribe_files(args.audio):
        if isinstance(result, AudioError):
            failed += 1
            print(f"flexispeech transcribe: error: {result}", file=sys.stderr, flush=True)
        elif args.json:
            print(result.to_json(), flush=True)
        else:
            print(f"{result.id}\t{result.text}", flush=True)
    return 1 if failed else 0
