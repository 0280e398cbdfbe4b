"""``flexispeech bench``: time base, PEFT LoRA and each Flexi-LoRA path side by side."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from flexispeech.models.whisper import FULL_POSITIONS, POSITIONS_PER_SECOND

HELP = "time base, PEFT LoRA and every Flexi-LoRA compute path on a random-init Whisper shape"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Shape, batch, input length, device and repetitions."""
    parser.add_argument("--shape", default="tiny", help="tiny, base, small or large-v3 (default tiny)")
    parser.add_argument("--batch", type=int, default=8, help="utterances per batch (default 8)")
    parser.add_argument(
        "--audio-ctx",
        type=int,
        default=100,
        help=f"encoder positions, {FULL_POSITIONS} = {FULL_POSITIONS // POSITIONS_PER_SECOND} s (default 100)",
    )
    parser.add_argument("--label-len", type=int, default=32, help="decoder tokens per utterance (default 32)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument(
        "--dtype",
        choices=("float32", "bfloat16"),
        default=None,
        help="float32 or bfloat16 (default: float32 on cpu, bfloat16 on cuda)",
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=2,
        help="untimed steps before a variant's first timed step, one before each later one (default 2)",
    )
    parser.add_argument(
        "--reps",
        type=int,
        default=5,
        help="interleaved rounds: each round times every variant once, in turn; the median over "
        "the rounds is reported, with its spread (default 5)",
    )
    parser.add_argument(
        "--profile", default=None, help="write a torch.profiler table of one Flexi step to this file"
    )
    parser.add_argument(
        "--only",
        default=None,
        metavar="REGEX",
        help="time only the variants whose name matches (a Python regular expression, e.g. "
        "'auto, all r=' or 'PEFT|mixed sorted'); the floor and the base forward, the ratios' "
        "references, are always timed",
    )
    parser.add_argument("--out", default=None, help="append the markdown table to this file")


def check_appendable(path: str, option: str) -> None:
    """A one-line ``ConfigError`` naming ``option`` when ``path`` cannot be appended to (a
    directory, a folder that does not exist, no permission): checked before the benchmark,
    which would otherwise run its minutes only to fail at the end."""
    from flexispeech.errors import ConfigError

    target = Path(path)
    if target.is_dir():
        raise ConfigError(f"{option} {path}: is a directory, not a file")
    folder = target.parent
    if not folder.is_dir():
        raise ConfigError(f"{option} {path}: no such directory {folder}")
    if not os.access(target if target.exists() else folder, os.W_OK):
        raise ConfigError(f"{option} {path}: not writable")


def run(args: argparse.Namespace) -> int:
    """Run the benchmark and print the ratio table."""
    from flexispeech.bench.spec import BenchSpec
    from flexispeech.bench.variants import format_table, run_bench
    from flexispeech.models.family import check_device

    check_device(args.device)  # as every command that takes --device
    for path, option in ((args.out, "--out"), (args.profile, "--profile")):
        if path is not None:
            check_appendable(path, option)
    dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    spec = BenchSpec(
        shape=args.shape,
        batch=args.batch,
        audio_ctx=args.audio_ctx,
        label_len=args.label_len,
        device=args.device,
        dtype=dtype,
        warmup=args.warmup,
        reps=args.reps,
        profile=args.profile,
        only=args.only,
    )
    table = format_table(run_bench(spec), spec)
    print(table)
    if args.out:
        with open(args.out, "a") as f:
            f.write(table + "\n\n")
    return 0
