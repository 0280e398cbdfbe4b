"""Command-line options that several commands share, defined once."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

from flexispeech.data.loading import MAX_DEFAULT_WORKERS, default_workers


def whole_number(least: int, most: int | None = None, what: str | None = None) -> Callable[[str], int]:
    """An argparse ``type``: a whole number from ``least`` to ``most`` (``what`` names it in
    the error, default "a whole number >= least")."""
    what = what or f"a whole number >= {least}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if value < least or (most is not None and value > most):
            raise argparse.ArgumentTypeError(f"expected {what}, got {value}")
        return value

    return parse


# A beam, a batch or a cap of 0 would divide by zero or decode nothing deep inside, a
# negative one would slice from the end.
positive_int = whole_number(1)


def positive_float(text: str) -> float:
    """argparse ``type``: a finite number > 0 (0 or less would never advance a stream or time
    out at once; nan and inf get past a ``> 0`` check and fail deep inside, in ``int()``)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text!r}") from None
    if not 0 < value < math.inf:  # False for nan too
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text!r}")
    return value


def add_batch_size_option(parser: argparse.ArgumentParser, rows: str = "utterances") -> None:
    """``--batch-size N``: ``rows`` decoded together, 16 by default (eval, signals, calibrate)."""
    parser.add_argument(
        "--batch-size",
        type=positive_int,
        default=16,
        help=f"{rows} per decoding batch (default: 16)",
    )


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


def add_fallback_options(parser: argparse.ArgumentParser, rank_help: str) -> None:
    """``--fallback-rank R`` (help: ``rank_help``) and ``--compression-ratio T``, the loop
    fallback of ``evaluation.fallback``, as eval, calibrate and transcribe spell them."""
    from flexispeech.evaluation.fallback import DEFAULT_THRESHOLD

    parser.add_argument("--fallback-rank", type=int, metavar="R", help=rank_help)
    parser.add_argument(
        "--compression-ratio",
        type=float,
        default=DEFAULT_THRESHOLD,
        metavar="T",
        help=f"the loop threshold of --fallback-rank (default: {DEFAULT_THRESHOLD}, as openai-whisper)",
    )


def fallback(args: argparse.Namespace):  # -> Fallback | None (imported lazily: --help stays fast)
    """The ``Fallback`` that ``--fallback-rank`` / ``--compression-ratio`` ask for, or None;
    a bad value is a one-line ``ConfigError``."""
    from flexispeech.errors import ConfigError
    from flexispeech.evaluation.fallback import Fallback

    if args.fallback_rank is None:
        return None
    try:
        return Fallback(args.fallback_rank, args.compression_ratio)
    except ValueError as err:
        raise ConfigError(f"--fallback-rank / --compression-ratio: {err}") from None


def rank_list(value: str | None, option: str, least: int) -> list[int]:
    """``--consensus-ranks 2,4,8`` (or ``--joint-ranks 0``) as sorted ranks (empty when not
    given); a bad list, or one of fewer than ``least`` ranks, is a one-line ``ConfigError``
    naming ``option``."""
    from flexispeech.errors import ConfigError

    if value is None:
        return []
    try:
        ranks = sorted({int(v) for v in value.replace(" ", ",").split(",") if v})
    except ValueError:
        raise ConfigError(f"{option}: expected ranks like 0 or 2,4,8,16, got {value!r}") from None
    if len(ranks) < least or (ranks and ranks[0] < 0):
        many = "one or more" if least == 1 else "two or more"
        raise ConfigError(f"{option}: needs {many} ranks >= 0, got {value!r}")
    return ranks


def base_weight(value: float | None, joint: list[int]) -> dict[int, float]:
    """``--joint-base-weight W`` as the joint pick's weights (``{0: W}``; empty when not
    given); a bad value, or one without rank 0 in ``--joint-ranks``, is a one-line
    ``ConfigError``."""
    from flexispeech.errors import ConfigError

    if value is None:
        return {}
    if not 0 <= value < float("inf"):
        raise ConfigError(f"--joint-base-weight: needs a finite weight >= 0, got {value}")
    if 0 not in joint:
        raise ConfigError("--joint-base-weight weighs rank 0's vote: give --joint-ranks with 0")
    return {0: float(value)}


JOINT_WEIGHT_HELP = (
    "the weight of the base model's (rank 0's) log-probabilities in the joint pick's sum, the "
    "routed rank's being 1 (default 1: equal votes). Lower keeps more of what the adapter "
    "learned and vetoes less; choose it on validation data, not on the test split"
)

JOINT_HELP = (
    "decode every utterance the router sends to an adapter rank also at each of these ranks, "
    "score each transcript at every one of them and at the routed rank (teacher-forced), and keep "
    "the one they find likeliest together. `--joint-ranks 0`: the routed rank and the base model, "
    "which can then veto a transcript only the adapter believes. Costs one decoding per rank, and "
    "one scoring pass per rank where the transcripts differ. Speech only (Whisper, Wav2Vec2); needs "
    "--adapter"
)
