"""Compute a text task's complexity signals and base-model difficulty once, cached as columns.

The text counterpart of :mod:`flexispeech.signals.cache`. Columns written into the split
(``flexispeech.text_data.TextTaskSplit`` reads ``signal_*`` back as router signals):

* ``signal_n_words``, ``signal_n_chars``, ``signal_n_digits``, ``signal_n_numbers``,
  ``signal_n_operators``, ``signal_n_sentences``: surface counts of the prompt
  (:func:`flexispeech.signals.text.text_signals`), no model needed;
* with the base LM: ``signal_prompt_ppl`` (mean next-token NLL of the prompt,
  :func:`flexispeech.signals.text.prompt_perplexity`), and from one greedy decoding pass
  of the chat-formatted prompt ``base_answer`` (what the base model answers),
  ``base_correct`` (its score: final-number match for math, token F1 for QA) and
  ``base_difficulty`` = 1 - ``base_correct`` + a tie-break below 0.01 that grows with the
  prompt perplexity. Most questions score exactly 0 or 1, and the learned router's rank
  labels are quantile cuts of this column: ordering the ties by perplexity makes the
  share of examples per rank exact instead of all-or-nothing per tie.

A column already present is not recomputed unless ``force``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from flexispeech.data import SIGNAL_PREFIX, make_collate
from flexispeech.signals.text import prompt_perplexity, text_signals
from flexispeech.text_metrics import numeric_match, token_f1

SURFACE_SIGNALS = ("n_words", "n_chars", "n_digits", "n_numbers", "n_operators", "n_sentences")
MODEL_COLUMNS = (SIGNAL_PREFIX + "prompt_ppl", "base_answer", "base_correct", "base_difficulty")
TIE_BREAK_SPAN = 0.01  # < the smallest gap between two distinct scores that matters


def score_answer(metric: str, prediction: str, golds: list[str]) -> float:
    """1/0 final-number match (``metric="accuracy"``) or SQuAD token F1 (``"f1"``)."""
    if metric == "accuracy":
        return float(any(numeric_match(prediction, g) for g in golds))
    return token_f1(prediction, golds)


def difficulty_with_tie_break(correct: list[float], ppl: list[float]) -> list[float]:
    """``1 - correct`` plus a perplexity rank scaled into [0, TIE_BREAK_SPAN) (NaN ppl: 0)."""
    order = sorted(range(len(ppl)), key=lambda i: ppl[i] if ppl[i] == ppl[i] else float("-inf"))
    rank = {i: pos for pos, i in enumerate(order)}
    n = max(len(ppl), 1)
    return [1.0 - c + TIE_BREAK_SPAN * rank[i] / n for i, c in enumerate(correct)]


def cache_surface_signals(task_dir: str | Path, split: str, force: bool = False) -> bool:
    """Add the surface-count signal columns to ``split``; returns whether anything was computed."""
    from data_prep.text_tasks import add_task_columns, load_text_task

    ds = load_text_task(Path(task_dir), split)
    columns = [SIGNAL_PREFIX + name for name in SURFACE_SIGNALS]
    if not force and all(c in ds.column_names for c in columns):
        return False
    counts = [text_signals(p) for p in ds["prompt"]]
    add_task_columns(Path(task_dir), split, {SIGNAL_PREFIX + n: [c[n] for c in counts] for n in SURFACE_SIGNALS})
    return True


def cache_model_signals(
    task_dir: str | Path,
    split: str,
    model: torch.nn.Module,
    tokenizer: Any,
    batch_size: int = 8,
    max_new_tokens: int = 96,
    force: bool = False,
    progress: bool = True,
) -> bool:
    """Score prompts under the base causal LM and decode its answers once; cache
    ``signal_prompt_ppl``, ``base_answer``, ``base_correct`` and ``base_difficulty``."""
    from data_prep.text_tasks import add_task_columns, load_text_task
    from flexispeech.models.causal_lm import FAMILY
    from flexispeech.text_data import TextTaskSplit

    task_dir = Path(task_dir)
    ds = load_text_task(task_dir, split)
    if not force and all(c in ds.column_names for c in MODEL_COLUMNS):
        return False
    rows = TextTaskSplit(task_dir, split)
    prompts = [str(r["prompt"]) for r in rows.rows]
    ppl = prompt_perplexity(model, tokenizer, prompts, batch_size=batch_size)
    collate = make_collate(FAMILY, tokenizer, train=False)
    answers: list[str] = []
    model.eval()
    for start in tqdm(range(0, len(rows), batch_size), desc=f"base answers {split}", unit="batch", disable=not progress):
        batch = collate([rows[i] for i in range(start, min(start + batch_size, len(rows)))])["inputs"]
        answers += FAMILY.generate(model, tokenizer, batch, max_new_tokens=max_new_tokens)
    correct = [score_answer(rows.metric, a, rows.golds(i)) for i, a in enumerate(answers)]
    add_task_columns(task_dir, split, dict(zip(MODEL_COLUMNS, (ppl, answers, correct, difficulty_with_tie_break(correct, ppl)))))
    return True


def cache_text_signals(
    task_dir: str | Path,
    splits: list[str],
    model_source: str | None = "smollm2-135m-instruct",
    batch_size: int = 8,
    max_new_tokens: int = 96,
    device: str = "cpu",
    force: bool = False,
    progress: bool = True,
) -> dict[str, list[str]]:
    """Cache every text signal of ``splits`` (model signals only when ``model_source``).

    Returns:
        split -> names of the ``signal_*`` columns the split now has.
    """
    from data_prep.text_tasks import load_text_task
    from flexispeech.models.causal_lm import FAMILY

    for split in splits:
        cache_surface_signals(task_dir, split, force)
    if model_source is not None:
        model, tokenizer = None, None
        for split in splits:
            have = load_text_task(Path(task_dir), split).column_names
            if not force and all(c in have for c in MODEL_COLUMNS):
                continue
            if model is None:
                model, tokenizer = FAMILY.load(model_source, device=device)
            cache_model_signals(task_dir, split, model, tokenizer, batch_size, max_new_tokens, force, progress)
    return {
        s: [c[len(SIGNAL_PREFIX):] for c in load_text_task(Path(task_dir), s).column_names if c.startswith(SIGNAL_PREFIX)]
        for s in splits
    }


def run_text_signals(args: Any) -> int:
    """``flexispeech signals TASK_DIR`` on a text task (``--model`` defaults to the task's
    causal LM, ``smollm2-135m-instruct``; ``--model none`` computes the surface counts only)."""
    from data_prep.text_tasks import read_text_task_info

    info = read_text_task_info(Path(args.corpus))
    splits = [s for s in args.splits.split(",") if s in info["splits"]]
    source = None if (args.model or "").lower() == "none" else (args.model or "smollm2-135m-instruct")
    have = cache_text_signals(args.corpus, splits, source, args.batch_size, args.max_new_tokens, args.device, args.force)
    for split, names in have.items():
        print(f"{split}: signals {', '.join(names)}" + ("; base answers cached" if source else ""))
    return 0
