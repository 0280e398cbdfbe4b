"""Command-line options that several commands share, defined once."""

from __future__ import annotations

import argparse

from flexispeech.data.loading import MAX_DEFAULT_WORKERS, default_workers


def add_workers_option(parser: argparse.ArgumentParser) -> None:
    """``--workers N``: loader processes that read and featurise clips ahead of the model."""
    parser.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="processes that read audio and make features ahead of the model (default: 0 on "
        f"a CPU, whose cores run the model; on a GPU up to {MAX_DEFAULT_WORKERS}, one core left free)",
    )


def workers(args: argparse.Namespace) -> int:
    """The ``--workers`` value, or the default for ``args.device``."""
    from flexispeech.errors import ConfigError

    if args.workers is None:
        return default_workers(args.device)
    if args.workers < 0:
        raise ConfigError(f"--workers: expected 0 or more processes, got {args.workers}")
    return args.workers
