"""Routing by benefit on text tasks: ``flexispeech calibrate`` on math and QA questions.

The text counterpart of the speech path (:mod:`flexispeech.evaluation.benefit`): every
question of a held-out split is answered at each candidate rank and at rank 0 (the base
model) by the decoding code of ``flexispeech eval`` (:func:`~flexispeech.evaluation.evaluate.decode_split`,
one batch of questions at a time, every rank in turn), the answers are kept per question
in a :class:`~flexispeech.evaluation.benefit.DecodeCache` (an interrupted run continues),
and each answer is scored as ``flexispeech eval`` scores it (``text_report.score_record``):
the task's metric, final-number match for math (``accuracy``) or token F1 for QA. A
question's error at a rank is 1 - its score, an [N, len(ranks)] table that the speech
path's router fit and constant fallback take in place of word errors
(:func:`~flexispeech.evaluation.benefit.fit_with_fallback`). The router reads the prompt
signals cached by ``flexispeech signals`` (surface counts and ``prompt_ppl``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from flexispeech.data.text import TextTaskSplit
from flexispeech.errors import ConfigError, FlexispeechError
from flexispeech.evaluation.benefit import DecodeCache, pending_rows
from flexispeech.evaluation.evaluate import decode_split
from flexispeech.evaluation.text_report import score_record
from flexispeech.lora.ranks import adapter_off
from flexispeech.lora.router import FixedRouter
from flexispeech.signals.text_cache import SURFACE_SIGNALS

# Every prompt signal `flexispeech signals` caches for a text task (signals.text_cache):
# the surface counts, then the base model's prompt perplexity.
TEXT_FEATURES = (*SURFACE_SIGNALS, "prompt_ppl")
# The key of a scored record (text_report.score_record) that holds each metric's score.
SCORE_KEYS = {"accuracy": "correct", "f1": "f1"}


def decode_text_at_ranks(
    model: torch.nn.Module,
    family: Any,
    tokenizer: Any,
    split: TextTaskSplit,
    ranks: Sequence[int],
    cache: DecodeCache,
    batch_size: int = 16,
    max_new_tokens: int | None = None,
    progress: bool = True,
    num_workers: int = 0,
) -> dict[str, dict[int, str]]:
    """Greedy answers of every question of ``split`` at each of ``ranks`` (question id ->
    {rank: answer}). Questions go in the order ``flexispeech eval`` batches them (by prompt
    length), one batch at a time, decoded at every rank (rank r > 0 as ``eval --rank r``
    does; rank 0 with the adapter off, configured or not) and added to ``cache``; questions
    already in ``cache`` are not decoded again."""
    todo, bar = pending_rows(split, cache, f"answer at ranks {list(ranks)}", "question", progress)
    for start in range(0, len(todo), batch_size):
        chunk = todo[start : start + batch_size]
        answers: dict[int, list[dict[str, Any]]] = {}
        for r in ranks:
            with adapter_off(model) if int(r) == 0 else contextlib.nullcontext():
                answers[int(r)], _ = decode_split(
                    model,
                    family,
                    tokenizer,
                    split,
                    None if int(r) == 0 else FixedRouter(int(r)),
                    batch_size,
                    progress=False,
                    max_new_tokens=max_new_tokens,
                    num_workers=num_workers,
                    indices=chunk,
                )
        cache.add(
            {
                str(split.rows[i]["id"]): {r: answers[r][j]["hyp"] for r in answers}
                for j, i in enumerate(chunk)
                if all("error" not in answers[r][j] for r in answers)
            }
        )
        bar.update(len(chunk))
    bar.close()
    return {str(r["id"]): cache.hyps[str(r["id"])] for r in split.rows if str(r["id"]) in cache.hyps}


def score_table(
    split: TextTaskSplit, hyps: dict[str, dict[int, str]], ranks: Sequence[int]
) -> tuple[list[int], torch.Tensor]:
    """Row indices of ``split`` answered at every rank, and each one's score at each rank
    under the task's metric ([n, len(ranks)], in [0, 1]), as ``flexispeech eval`` scores
    the same answer."""
    key = SCORE_KEYS[split.metric]
    rows, table = [], []
    for i, row in enumerate(split.rows):
        got = hyps.get(str(row["id"]))
        if got is None:
            continue
        rows.append(i)
        table.append([score_record({**split.record(i), "hyp": got[int(r)]})[key] for r in ranks])
    if not rows:
        raise FlexispeechError(f"{split.corpus_dir}: no question of the split was answered")
    return rows, torch.tensor(table, dtype=torch.float64)


def calibrate_text(
    args: argparse.Namespace,
    adapter: Path,
    config: dict[str, Any],
    ranks: list[int],
    features: list[str] | None,
    num_workers: int = 0,
) -> int:
    """``flexispeech calibrate`` on a text task (``args`` as the command parsed them;
    ``config`` the adapter's, ``ranks`` the checked candidates, 0 first; ``features``
    None for every cached prompt signal). Writes the adapter with the fitted router and
    ``summary.json`` beside the decode cache."""
    from flexispeech.evaluation.benefit import (
        benefit_labels,
        fit_with_fallback,
        open_decode_cache,
        serve_fitted_router,
    )
    from flexispeech.lora.io import load_adapter
    from flexispeech.models.causal_lm import DEFAULT_SOURCE
    from flexispeech.models.family import get_family, load_model

    meta = config["metadata"]
    family_name = meta.get("family") or "whisper"
    if family_name != "causal_lm":
        raise ConfigError(f"{adapter}: a {family_name} adapter cannot answer the text task {args.data}")
    if args.audio_ctx is not None:
        raise ConfigError(f"--audio-ctx: applies to speech; {args.data} is a text task")
    split = TextTaskSplit(args.data, args.split, max_examples=args.max_examples, seed=args.seed)
    source = meta.get("base_model") or DEFAULT_SOURCE
    features = features or [f for f in TEXT_FEATURES if f in split.signal_names]
    missing = [f for f in features if f not in split.signal_names]
    if missing or not features:
        raise ConfigError(
            f"{args.data}: split {args.split!r} has no cached signals {missing or list(TEXT_FEATURES)}; "
            f"run `flexispeech signals {args.data} --splits {args.split} --model {source}` first"
        )

    family = get_family(family_name)
    model, tokenizer = load_model(family, source, args.device)
    load_adapter(model, adapter)
    cache_dir, cache = open_decode_cache(
        adapter, args.cache_dir, args.split, ranks, max_new_tokens=args.max_new_tokens
    )
    hyps = decode_text_at_ranks(
        model,
        family,
        tokenizer,
        split,
        ranks,
        cache,
        args.batch_size,
        args.max_new_tokens,
        num_workers=num_workers,
    )
    rows, scores = score_table(split, hyps, ranks)
    errors = 1.0 - scores  # [N, len(ranks)]: what the router is fit to and judged on
    labels = benefit_labels(errors, ranks)
    signals = {k: v[rows] for k, v in split.all_signals().items()}
    router, fallback = fit_with_fallback(
        signals,
        labels,
        ranks,
        features,
        errors,
        args.objective,
        args.target_mean_rank,
        args.label_noise,
        args.seed,
    )
    metric = split.metric
    out = Path(args.out) if args.out else adapter
    routed = serve_fitted_router(
        model, router, fallback, signals, out, f"errors (1 - {metric}, summed) on {args.split}", "question", 1
    )

    summary = {
        "adapter": str(adapter),
        "out": str(out),
        "data": args.data,
        "split": args.split,
        "task": split.task_name,
        "n": len(rows),
        "ranks": ranks,
        "features": features,
        "objective": args.objective,
        "router": router.describe(),
        "max_new_tokens": args.max_new_tokens,
        **text_summary(scores, labels, routed, ranks, metric),
        **fallback,
    }
    (cache_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    by_rank = summary["score_by_rank"]
    print(
        f"{args.split}: {len(rows)} questions; {metric} by rank "
        + ", ".join(f"r{r} {100 * by_rank[str(r)]:.1f}%" for r in ranks)
        + f"; oracle {100 * summary['oracle_score']:.1f}%"
    )
    print(
        f"labels (smallest rank with the highest {metric}): "
        + " ".join(f"r{r}:{n}" for r, n in summary["label_histogram"].items())
    )
    print(
        f"router {router.describe()}: mean rank {summary['routed_mean_rank']:.2f}, {metric} "
        f"{100 * summary['routed_score_in_sample']:.1f}% on the {args.split} split it was fit on -> {out}"
    )
    return 0


def text_summary(
    scores: torch.Tensor, labels: torch.Tensor, routed: torch.Tensor, ranks: Sequence[int], metric: str
) -> dict[str, Any]:
    """The score keys of a text calibration's summary.json: the mean ``metric`` at every
    rank, of the best rank per question (the oracle) and of the routed ranks (in sample),
    the labels' and the routed ranks' histograms, and how many questions each rank
    answers better or worse than the base model (rank 0, column 0).

    Args:
        scores: [N, len(ranks)] each question's score at each rank.
        labels: [N] the smallest rank with the highest score.
        routed: [N] the rank the router serves.
    """
    col = {int(r): j for j, r in enumerate(ranks)}
    n = scores.shape[0]
    served = scores[torch.arange(n), torch.tensor([col[int(r)] for r in routed.tolist()])]
    return {
        "metric": metric,
        "errors_are": f"1 - {metric} per question",
        "score_by_rank": {str(r): float(scores[:, col[r]].mean()) for r in col},
        "label_histogram": {str(r): int((labels == r).sum()) for r in col},
        "oracle_score": float(scores.max(dim=1).values.mean()),
        "routed_score_in_sample": float(served.mean()),
        "routed_histogram": {str(r): int((routed == r).sum()) for r in col},
        "routed_mean_rank": float(routed.float().mean()),
        "questions_better_than_base": {
            str(r): int((scores[:, col[r]] > scores[:, 0]).sum()) for r in col if r
        },
        "questions_worse_than_base": {
            str(r): int((scores[:, col[r]] < scores[:, 0]).sum()) for r in col if r
        },
    }
