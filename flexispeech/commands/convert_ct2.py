"""``flexispeech convert-ct2``: convert a CTranslate2 Whisper model to a transformers one."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

HELP = "convert a CTranslate2 (faster-whisper) Whisper directory into a transformers directory"

DESCRIPTION = f"""{HELP}.

SRC holds model.bin (float32, float16 or int8 with scales), config.json and tokenizer.json,
as written by ct2-transformers-converter or shipped for faster-whisper. OUT receives
float32 model.safetensors, config.json, generation_config.json, the tokenizer (with the
timestamp tokens) and the feature extractor, so that WhisperForConditionalGeneration
and WhisperProcessor load it offline with from_pretrained(OUT). OUT is written into a
temporary sibling directory and renamed at the end: an interrupted run leaves no OUT.

Greedy decoding of the result gives the same tokens as CTranslate2 on the source."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """SRC, OUT and --overwrite."""
    parser.description = DESCRIPTION
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument(
        "src",
        type=Path,
        metavar="SRC",
        help="CTranslate2 Whisper directory (model.bin, config.json, tokenizer.json)",
    )
    parser.add_argument(
        "out", type=Path, metavar="OUT", help="transformers directory to create (must not exist or be empty)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace OUT if it already exists")


def run(args: argparse.Namespace) -> int:
    """Convert and print the output directory with the model's size and the time taken."""
    from flexispeech.models.ct2_convert import convert_ct2_whisper

    start = time.perf_counter()
    out = convert_ct2_whisper(args.src, args.out, overwrite=args.overwrite)
    size = (out / "model.safetensors").stat().st_size / 1e6
    print(f"{out}: {size:.0f} MB float32 safetensors in {time.perf_counter() - start:.1f} s")
    return 0
