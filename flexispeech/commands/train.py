"""``flexispeech train``: train a Flexi-LoRA or static-LoRA adapter from a recipe config."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

HELP = "train an adapter from a YAML config (static LoRA or Flexi-LoRA, any family)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        help="a recipe config, e.g. recipes/synthetic/conf/flexi_threshold.yaml (default: built-in defaults + overrides)",
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="config overrides with dotted keys, e.g. train.lr=3e-4 train.max_steps=200 (anywhere among the options)",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue from <output_dir>/checkpoint if there is one (a killed run ends as if never stopped)",
    )
    parser.add_argument(
        "--no-progress", action="store_true", help="no progress bar (logs still go to train_log.jsonl)"
    )
    parser.epilog = (
        "Runs on several GPUs unchanged under `accelerate launch -m flexispeech train ...` or torchrun. "
        "Writes <output_dir>/adapter, train_log.jsonl, train_summary.json and config.yaml."
    )
    _overrides_anywhere(parser)


def _overrides_anywhere(parser: argparse.ArgumentParser) -> None:
    """Let ``key=value`` overrides follow options too (``--config c.yaml a=1 --resume b=2``).

    argparse fills a positional from one run of arguments only; the runs after an option
    come back as unrecognised, and the top-level parser (which parses the subcommand's
    arguments for it) fails on them. This parser's own parse is the one hook a subcommand
    has: it moves those runs into ``overrides``, in order, and leaves the unknown options
    unrecognised, so ``--bogus`` is still an error."""
    parse_known_args = parser.parse_known_args

    def parse(args: Sequence[str] | None = None, namespace: Any = None) -> tuple[Any, list[str]]:
        namespace, extras = parse_known_args(args, namespace)
        later = [a for a in extras if not a.startswith("-")]
        if later:
            namespace.overrides = [*(namespace.overrides or []), *later]
        return namespace, [a for a in extras if a.startswith("-")]

    parser.parse_known_args = parse  # type: ignore[method-assign]


def run(args: argparse.Namespace) -> int:
    from flexispeech.training.config import load_config
    from flexispeech.training.loop import train
    from flexispeech.training.run_setup import resume_notes

    cfg = load_config(args.config, args.overrides)
    reached, other_corpus = resume_notes(cfg) if args.resume else (None, None)
    if other_corpus is not None:
        print(
            f"warning: train: the checkpoint in {cfg.output_dir} was trained on data.corpus {other_corpus} "
            f"(its config.yaml), this run reads {cfg.data.corpus}",
            file=sys.stderr,
        )
    adapter = train(cfg, resume=args.resume, progress=not args.no_progress)
    if reached is not None:  # else it reads like a run that trained: steps_run 0 is easy to miss
        print(
            f"[{cfg.name}] nothing trained: the checkpoint at step {reached} already reaches "
            f"train.max_steps={cfg.train.max_steps} (raise it to train on)"
        )
    print(f"adapter written to {adapter}")
    return 0
