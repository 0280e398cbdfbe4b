"""``flexispeech signals``: compute and cache complexity signals (and base-model WER) of a corpus."""

from __future__ import annotations

import argparse

from flexispeech.commands import options
from flexispeech.commands.options import add_workers_option, workers
from flexispeech.models.causal_lm import DEFAULT_SOURCE as TEXT_DEFAULT_SOURCE
from flexispeech.models.whisper import DEFAULT_SOURCE, FULL_POSITIONS, POSITIONS_PER_SECOND

DEFAULT_SPLITS = "train,validation,test"  # those a corpus lacks are skipped; named ones must exist

HELP = (
    "cache per-utterance complexity signals (duration, SNR, speech activity, decoder confidence) and base WER"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("corpus", help="corpus directory (from `flexispeech prepare`)")
    parser.add_argument(
        "--splits",
        help="comma-separated splits (default: train,validation,test, skipping those the corpus "
        "lacks; a split named here that the corpus lacks is an error)",
    )
    parser.add_argument(
        "--model",
        help="base Whisper model for the decoder-confidence proxy and base WER "
        f"(e.g. {DEFAULT_SOURCE}); without it only the audio signals are computed. On a text "
        f"task: the causal LM for prompt perplexity, base answers and difficulty labels (default: "
        f"{TEXT_DEFAULT_SOURCE}). `--model none`: no model, only the audio signals (text task: "
        "the prompt's surface counts)",
    )
    parser.add_argument(
        "--audio-ctx",
        type=options.positive_int,
        help="Whisper encoder positions (500 = 10 s); longer utterances get no model signals "
        f"(default: the model's full window, {FULL_POSITIONS} = 30 s)",
    )
    options.add_batch_size_option(parser)
    parser.add_argument(
        "--max-new-tokens",
        type=options.positive_int,
        default=96,
        help="text tasks: cap on the base model's answer tokens (default: 96)",
    )
    parser.add_argument(
        "--label-splits",
        help="text tasks: the splits that also get the base model's answers and "
        "difficulty labels (default: every split in --splits; the learned router reads them on train only)",
    )
    parser.add_argument(
        "--embedding",
        action="store_true",
        help="also cache signal_embedding: the --model encoder's output mean-pooled over each "
        "utterance (a vector router feature; use the model the adapters are trained on, where "
        "it costs nothing at inference when the encoder is not adapted)",
    )
    parser.add_argument(
        "--embedding-only",
        action="store_true",
        help="with --model: the audio signals and signal_embedding alone, an encoder pass with no "
        "decoding (no proxy, no base WER): what the novelty gate (`flexispeech gate`) reads on the "
        "training split when no router reads its proxy",
    )
    parser.add_argument("--force", action="store_true", help="recompute columns that are already cached")
    parser.add_argument("--device", default="cpu", help="torch device for the base model (default: cpu)")
    add_workers_option(parser)


def check_splits(corpus: str, option: str, value: str | None, available: list[str]) -> None:
    """A ``ConfigError`` naming every split in the comma list ``value`` (given as ``option``)
    that the corpus lacks, and listing those it has: a typo must not skip a split silently."""
    from flexispeech.errors import ConfigError

    if value is None:
        return
    names = [s.strip() for s in value.split(",") if s.strip()]
    unknown = [s for s in names if s not in available]
    if unknown or not names:
        raise ConfigError(
            f"{corpus}: {option} {value!r}: no split {', '.join(unknown) or '(none named)'} "
            f"in this corpus; its splits: {', '.join(available)}"
        )


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from flexispeech.data.corpus import read_corpus_info
    from flexispeech.data.text_format import is_text_task, read_text_task_info
    from flexispeech.errors import ConfigError
    from flexispeech.signals.cache import cache_audio_signals, cache_embedding, cache_model_signals

    text_task = is_text_task(Path(args.corpus))
    info = read_text_task_info(Path(args.corpus)) if text_task else read_corpus_info(Path(args.corpus))
    check_splits(args.corpus, "--splits", args.splits, list(info["splits"]))
    if text_task:
        check_splits(args.corpus, "--label-splits", args.label_splits, list(info["splits"]))
    if args.splits is None:
        args.splits = DEFAULT_SPLITS
    args.splits = ",".join(s.strip() for s in args.splits.split(","))
    if text_task:  # a text task: surface counts, prompt perplexity, base answers
        from flexispeech.signals.text_cache import run_text_signals

        return run_text_signals(args)
    if (args.model or "").lower() == "none":  # as on a text task: no model, audio signals only
        args.model = None
    if (args.embedding or args.embedding_only) and not args.model:
        option = "--embedding-only" if args.embedding_only else "--embedding"
        raise ConfigError(f"{option} needs --model: the Whisper model whose encoder gives the embedding")
    splits = [s for s in args.splits.split(",") if s in info["splits"]]
    model = processor = None
    for split in splits:
        skipped: list[str] = []  # rows whose audio cannot be decoded: reported, given NaN signals
        did = cache_audio_signals(
            args.corpus, split, force=args.force, skipped=skipped, num_workers=workers(args)
        )
        print(
            f"{split}: audio signals {'computed' if did else 'already cached'}"
            + (f", {len(skipped)} utterance(s) skipped (undecodable audio)" if skipped else "")
        )
        if args.model:
            if model is None:
                from flexispeech.models.family import get_family, load_model
                from flexispeech.models.sources import pretrained_path

                model, processor = load_model(get_family("whisper"), args.model, args.device, args.audio_ctx)
                model_dir = pretrained_path(args.model)
            window = args.audio_ctx / POSITIONS_PER_SECOND if args.audio_ctx else None
            did = (
                set()
                if args.embedding_only
                else cache_model_signals(
                    args.corpus,
                    split,
                    model,
                    processor,
                    model_dir if isinstance(model_dir, Path) else None,
                    args.batch_size,
                    window,
                    force=args.force,
                    skipped=skipped,
                    num_workers=workers(args),
                    embedding=args.embedding,
                )
            )
            if not args.embedding_only:
                print(f"{split}: proxy and base WER {'computed' if did else 'already cached'}")
            if "embedding" in did:
                print(f"{split}: pooled encoder embedding computed (in the same pass)")
            elif args.embedding or args.embedding_only:
                did = cache_embedding(
                    args.corpus,
                    split,
                    model,
                    processor,
                    args.batch_size,
                    window,
                    force=args.force,
                    skipped=skipped,
                    num_workers=workers(args),
                )
                print(f"{split}: pooled encoder embedding {'computed' if did else 'already cached'}")
    return 0
