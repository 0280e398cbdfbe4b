"""``flexispeech calibrate``: fit an adapter's router to the measured benefit of each rank."""

from __future__ import annotations

import argparse

from flexispeech.commands import options
from flexispeech.commands.options import add_fallback_options, add_workers_option, workers

HELP = (
    "route by benefit: decode a held-out split at every rank and at rank 0 (the base model), fit a "
    "router to each utterance's word errors at every rank (or to its best rank), and serve it unless "
    "one rank for every utterance makes fewer errors there; on a text task (math, qa) each question's "
    "error at a rank is 1 - its score (math: final-number match; qa: token F1)"
)

DEFAULT_FEATURES = ("snr_db", "proxy", "proxy_entropy", "duration", "speech_activity")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("adapter", help="adapter directory (from `flexispeech train`)")
    parser.add_argument(
        "--data",
        required=True,
        help="corpus or text task directory (from `flexispeech prepare`), with cached signals",
    )
    parser.add_argument(
        "--split",
        default="validation",
        help="held-out split to decode and fit on (default: validation; never the test split)",
    )
    parser.add_argument(
        "--out",
        help="where to write the adapter with the new router (default: replace the "
        "router of ADAPTER in place; the weights are unchanged)",
    )
    parser.add_argument(
        "--ranks",
        help="comma-separated candidate ranks (default: the adapter's ranks; rank 0, "
        "the base model, is always added)",
    )
    parser.add_argument(
        "--features",
        help="comma-separated signals the router reads (default: "
        f"{','.join(DEFAULT_FEATURES)}, those cached; 'embedding' after `flexispeech signals --embedding`; "
        "text tasks: every prompt signal cached, the surface counts and prompt_ppl)",
    )
    parser.add_argument(
        "--target-mean-rank",
        type=float,
        help="set the router's mean rank on the split to at most this (default: serve the predicted "
        "label, rank 0 unless a rank is predicted to help)",
    )
    parser.add_argument(
        "--label-noise",
        type=float,
        default=0.0,
        help="share of labels replaced by a random rank per training epoch of the router (default: 0)",
    )
    add_fallback_options(
        parser,
        "score every rank as `flexispeech eval --fallback-rank R` serves it: a looping "
        "hypothesis (compression ratio over --compression-ratio) replaced by rank R's where that "
        "loops less (speech; R among the decoded ranks, 0 always is; default: off)",
    )
    parser.add_argument(
        "--objective",
        choices=("errors", "labels"),
        default="errors",
        help="what the router is fit to: 'errors', each utterance's word errors at every rank (text: "
        "each question's 1 - score; it serves the rank expected to make the fewest errors; default), or "
        "'labels', the smallest rank with the lowest WER (text: the highest score; cross-entropy; rank 0 "
        "wherever most similar utterances gain nothing)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the router's fit (default: 0)")
    parser.add_argument(
        "--audio-ctx", type=int, help="Whisper encoder positions (default: the adapter's window; speech only)"
    )
    parser.add_argument(
        "--max-new-tokens",
        type=int,
        help="text tasks: cap on generated tokens, as `flexispeech eval --max-new-tokens` (default: the family's)",
    )
    options.add_batch_size_option(parser, "utterances (questions)")
    parser.add_argument(
        "--max-examples", type=int, help="use only the first N utterances or questions (seeded sample)"
    )
    parser.add_argument(
        "--cache-dir",
        help="where per-utterance (per-question) decodes are kept while running, so an interrupted "
        "run continues (default: <adapter>/../calibrate_<split>)",
    )
    parser.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    add_workers_option(parser)


def _names(text: str | None, option: str) -> list[str] | None:
    if text is None:
        return None
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        from flexispeech.errors import ConfigError

        raise ConfigError(f"{option}: expected a comma-separated list, got {text!r}")
    return names


def run(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from flexispeech.data.text import open_split
    from flexispeech.data.text_format import is_text_task
    from flexispeech.errors import ConfigError
    from flexispeech.evaluation.benefit import (
        benefit_labels,
        decode_at_ranks,
        fit_with_fallback,
        open_decode_cache,
        reference_words,
        serve_fitted_router,
        wer_table,
    )
    from flexispeech.evaluation.metrics import error_counts, source_normalizer
    from flexispeech.evaluation.tables import pct
    from flexispeech.lora.io import check_own_dir, load_adapter, read_adapter_config
    from flexispeech.models import whisper
    from flexispeech.models.family import get_family, load_model

    adapter = Path(args.adapter)
    data = read_adapter_config(adapter)["config"]
    meta = data["metadata"]
    if args.out:  # refused now, not after every rank of the split is decoded
        check_own_dir(Path(args.out), adapter)
    if args.split == "test":
        raise ConfigError(
            "--split test: fit the router on a held-out split (validation), never on the test split"
        )
    try:
        ranks = sorted({0, *(int(r) for r in (_names(args.ranks, "--ranks") or data["ranks"]))})
    except ValueError:
        raise ConfigError(f"--ranks: expected integers, got {args.ranks!r}") from None
    bad = [r for r in ranks if r and r not in data["ranks"]]
    if bad:
        raise ConfigError(f"--ranks: {bad} are not ranks of the adapter {data['ranks']}")
    if args.label_noise and args.objective != "labels":
        raise ConfigError("--label-noise: applies to --objective labels (the errors objective has no labels)")
    if is_text_task(Path(args.data)):  # questions scored by the task's metric, not by WER
        if args.fallback_rank is not None:
            raise ConfigError(
                "--fallback-rank: applies to speech (a loop of transcribed words), not to text tasks"
            )
        from flexispeech.evaluation.text_benefit import calibrate_text

        features = _names(args.features, "--features")
        return calibrate_text(args, adapter, data, ranks, features, workers(args))
    if args.max_new_tokens is not None:
        raise ConfigError("--max-new-tokens: applies to text tasks, not to speech")
    family = get_family(meta.get("family") or "whisper")
    audio_ctx = args.audio_ctx or meta.get("audio_ctx")
    window = audio_ctx / whisper.POSITIONS_PER_SECOND if audio_ctx else None
    split = open_split(
        args.data, args.split, max_duration=window, max_examples=args.max_examples, seed=args.seed
    )
    features = _names(args.features, "--features") or [f for f in DEFAULT_FEATURES if f in split.signal_names]
    missing = [f for f in features if f not in split.signal_names]
    if missing or not features:
        raise ConfigError(
            f"{args.data}: split {args.split!r} has no cached signals {missing or list(DEFAULT_FEATURES)} "
            f"(it has {sorted(split.signal_names)}); "
            f"run `flexispeech signals {args.data} --splits {args.split} --model whisper-tiny.en` first"
            + (" (with --embedding for 'embedding')" if "embedding" in missing else "")
            + ", or name --features among its signals"
        )

    source = meta.get("base_model") or whisper.DEFAULT_SOURCE
    model, processor = load_model(family, source, args.device, audio_ctx)
    load_adapter(model, adapter)
    cache_dir, cache = open_decode_cache(adapter, args.cache_dir, args.split, ranks, audio_ctx=audio_ctx)
    hyps = decode_at_ranks(
        model, family, processor, split, ranks, cache, args.batch_size, num_workers=workers(args)
    )

    from flexispeech.evaluation.fallback import fallback_at_every_rank

    loops_replaced: dict[int, int] = {}
    if args.fallback_rank is not None:
        # Fit and compare ranks on what evaluation will serve: the fallback's output (the
        # cache keeps the plain decodings).
        try:
            hyps, loops_replaced = fallback_at_every_rank(hyps, options.fallback(args))
        except ValueError as err:
            raise ConfigError(f"--fallback-rank: {err}") from None
    normalize = source_normalizer(source)
    rows, wers = wer_table(split, hyps, ranks, normalize)
    labels = benefit_labels(wers, ranks)
    signals = {k: v[rows] for k, v in split.all_signals().items()}
    word_errors = wers * reference_words(split, rows, normalize)[:, None]  # [N, len(ranks)]
    router, fallback = fit_with_fallback(
        signals,
        labels,
        ranks,
        features,
        word_errors,
        args.objective,
        args.target_mean_rank,
        args.label_noise,
        args.seed,
    )
    out = Path(args.out) if args.out else adapter
    routed = serve_fitted_router(
        model, router, fallback, signals, out, f"word errors on {args.split}", "utterance"
    )

    refs = [str(split.rows[i]["text"]) for i in rows]
    col = {r: j for j, r in enumerate(ranks)}
    by_rank = {
        r: error_counts(refs, [hyps[str(split.rows[i]["id"])][r] for i in rows], normalize)["wer"]
        for r in ranks
    }
    best = [hyps[str(split.rows[i]["id"])][int(lab)] for i, lab in zip(rows, labels.tolist())]
    served = [hyps[str(split.rows[i]["id"])][int(r)] for i, r in zip(rows, routed.tolist())]
    summary = {
        "adapter": str(adapter),
        "out": str(out),
        "data": args.data,
        "split": args.split,
        "n": len(rows),
        "ranks": ranks,
        "features": features,
        "objective": args.objective,
        "router": router.describe(),
        "wer_by_rank": {str(r): by_rank[r] for r in ranks},
        "label_histogram": {str(r): int((labels == r).sum()) for r in ranks},
        "oracle_wer": error_counts(refs, best, normalize)["wer"],
        "routed_wer_in_sample": error_counts(refs, served, normalize)["wer"],
        "routed_histogram": {str(r): int((routed == r).sum()) for r in ranks},
        "routed_mean_rank": float(routed.float().mean()),
        **fallback,
        "loop_fallback": None
        if args.fallback_rank is None
        else {
            "rank": args.fallback_rank,
            "threshold": args.compression_ratio,
            "replaced_by_rank": {str(r): n for r, n in loops_replaced.items()},
        },
        "utterances_better_than_base": {
            str(r): int((wers[:, col[r]] < wers[:, 0]).sum()) for r in ranks if r
        },
        "utterances_worse_than_base": {str(r): int((wers[:, col[r]] > wers[:, 0]).sum()) for r in ranks if r},
    }
    (cache_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(
        f"{args.split}: {len(rows)} utterances; WER by rank "
        + ", ".join(f"r{r} {pct(by_rank[r])}%" for r in ranks)
        + f"; oracle {pct(summary['oracle_wer'])}%"
    )
    if loops_replaced:
        print(
            f"loop fallback to rank {args.fallback_rank}: hypotheses replaced "
            + " ".join(f"r{r}:{n}" for r, n in loops_replaced.items())
        )
    print(
        "labels (smallest rank with the lowest WER): "
        + " ".join(f"r{r}:{n}" for r, n in summary["label_histogram"].items())
    )
    print(
        f"router {router.describe()}: mean rank {summary['routed_mean_rank']:.2f}, "
        f"WER {pct(summary['routed_wer_in_sample'])}% on the {args.split} split it was fit on -> {out}"
    )
    return 0
