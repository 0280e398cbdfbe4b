"""The ``flexispeech`` command line: one subcommand per module in ``flexispeech.commands``.

Each command module defines ``HELP`` (one line), ``add_arguments(parser)`` and
``run(args) -> int``. Modules import their heavy dependencies inside ``run`` so that
``flexispeech --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from flexispeech import __version__
from flexispeech.errors import FlexispeechError

# name -> module; the order is the order of `flexispeech --help`.
COMMANDS: dict[str, str] = {
    "prepare": "flexispeech.commands.prepare",
    "signals": "flexispeech.commands.signals",
    "train": "flexispeech.commands.train",
    "eval": "flexispeech.commands.eval",
    "calibrate": "flexispeech.commands.calibrate",
    "gate": "flexispeech.commands.gate",
    "scale": "flexispeech.commands.scale",
    "compare": "flexispeech.commands.compare",
    "transcribe": "flexispeech.commands.transcribe",
    "stream": "flexispeech.commands.stream",
    "serve": "flexispeech.commands.serve",
    "bench": "flexispeech.commands.bench",
    "export": "flexispeech.commands.export",
    "convert-ct2": "flexispeech.commands.convert_ct2",
    "info": "flexispeech.commands.info",
}


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every registered subcommand."""
    parser = argparse.ArgumentParser(
        prog="flexispeech",
        description="Input-adaptive LoRA (Flexi-LoRA) for speech models: adapters whose rank "
        "is routed per utterance from its complexity (duration, SNR, decoder confidence).",
    )
    parser.add_argument("--version", action="version", version=f"flexispeech {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        cmd = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(cmd)
        cmd.set_defaults(_run=module.run)
    return parser


def quiet_libraries() -> None:
    """Keep library chatter (transformers' deprecation notes, per-load progress bars)
    out of command output; ``--debug`` keeps it. Our own progress bars stay."""
    import os

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)  # deprecations inside libraries
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``flexispeech`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    if not args.debug:
        quiet_libraries()
    try:
        return int(args._run(args) or 0)
    except FlexispeechError as err:
        if args.debug:
            raise
        print(f"flexispeech {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"flexispeech {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
