"""``flexispeech train``: train a Flexi-LoRA or static-LoRA adapter from a recipe config."""

from __future__ import annotations

import argparse

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
        help="config overrides with dotted keys, e.g. train.lr=3e-4 train.max_steps=200",
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


def run(args: argparse.Namespace) -> int:
    from flexispeech.training.config import load_config
    from flexispeech.training.loop import train

    cfg = load_config(args.config, args.overrides)
    adapter = train(cfg, resume=args.resume, progress=not args.no_progress)
    print(f"adapter written to {adapter}")
    return 0
