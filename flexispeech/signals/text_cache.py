"""Compute a text task's complexity signals and base-model difficulty once, cached as columns.

The text counterpart of :mod:`flexispeech.signals.cache`. Columns written into the split
(``flexispeech.data.text.TextTaskSplit`` reads ``signal_*`` back as router signals):

* ``signal_n_words``, ``signal_n_chars``, ``signal_n_digits``, ``signal_n_numbers``,
  ``signal_n_operators``, ``signal_n_sentences``, ``signal_n_question_words``: surface counts of the prompt
  (:func:`flexispeech.signals.text.text_signals`), no model needed;
* with the base LM: ``signal_prompt_ppl`` (mean next-token NLL of the prompt,
  :func:`flexispeech.signals.text.prompt_perplexity`); ``base_gold_nll``, the summed NLL
  (nats) of the gold short answer and its end-of-turn token right after the
  chat-formatted prompt (how far the base model is from saying the right answer); and
  from one greedy decoding pass of the chat-formatted prompt ``base_answer`` (what the
  base model answers), ``base_correct`` (its score: final-number match for math, token F1
  for QA) and ``base_difficulty`` = 1 - ``base_correct`` + a tie-break below 0.01 that
  grows with ``base_gold_nll``. The learned router's rank labels are quantile cuts of
  this column, and a small base model gets most questions exactly wrong (QA: F1 0 on
  most): correctness alone would leave the labels to chance inside that tie, while the
  gold answer's NLL orders it by how wrong the base model is. ``base_gold_nll`` and
  ``base_difficulty`` only use a row's gold answer, so they are labels for training rows,
  never router inputs.

A column already present is not recomputed unless ``force``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from flexispeech.data.speech import SIGNAL_PREFIX, make_collate
from flexispeech.data.text_format import add_task_columns, load_text_task, read_text_task_info
from flexispeech.evaluation.text_metrics import numeric_match, token_f1
from flexispeech.models.causal_lm import DEFAULT_SOURCE
from flexispeech.signals.text import prompt_perplexity, text_signals

SURFACE_SIGNALS = (
    "n_words",
    "n_chars",
    "n_digits",
    "n_numbers",
    "n_operators",
    "n_sentences",
    "n_question_words",
)
PPL_COLUMN = SIGNAL_PREFIX + "prompt_ppl"  # a router input: every split needs it
LABEL_COLUMNS = ("base_gold_nll", "base_answer", "base_correct", "base_difficulty")  # training labels
TIE_BREAK_SPAN = 0.01  # < the smallest gap between two distinct scores that matters


def score_answer(metric: str, prediction: str, golds: list[str]) -> float:
    """1/0 final-number match (``metric="accuracy"``) or SQuAD token F1 (``"f1"``)."""
    if metric == "accuracy":
        return float(any(numeric_match(prediction, g) for g in golds))
    return token_f1(prediction, golds)


def difficulty_with_tie_break(correct: list[float], tie_break: list[float]) -> list[float]:
    """``1 - correct`` plus the rank of ``tie_break`` (higher = harder; NaN lowest) scaled
    into [0, TIE_BREAK_SPAN)."""
    order = sorted(
        range(len(tie_break)), key=lambda i: tie_break[i] if tie_break[i] == tie_break[i] else float("-inf")
    )
    rank = {i: pos for pos, i in enumerate(order)}
    n = max(len(tie_break), 1)
    return [1.0 - c + TIE_BREAK_SPAN * rank[i] / n for i, c in enumerate(correct)]


def gold_answer_nll(
    model: torch.nn.Module, tokenizer: Any, split: Any, batch_size: int = 8, progress: bool = False
) -> list[float]:
    """Summed NLL (nats) of each row's gold short answer (plus the end token) after its
    chat-formatted prompt, under ``model``: the training loss of that row, unaveraged.

    Args:
        split: a ``TextTaskSplit`` with ``target="answer"``.

    Returns:
        one float per row, in order.
    """
    from flexispeech.models.causal_lm import FAMILY

    out: list[float] = []
    model.eval()
    with torch.no_grad():
        for start in tqdm(
            range(0, len(split), batch_size), desc="gold-answer NLL", unit="batch", disable=not progress
        ):
            batch = FAMILY.collate(
                tokenizer, [split[i] for i in range(start, min(start + batch_size, len(split)))]
            )
            nll, _ = FAMILY.answer_nll(model, batch)
            out += nll.tolist()
    return out


def cache_surface_signals(task_dir: str | Path, split: str, force: bool = False) -> bool:
    """Add the surface-count signal columns to ``split``; returns whether anything was computed."""
    ds = load_text_task(Path(task_dir), split)
    columns = [SIGNAL_PREFIX + name for name in SURFACE_SIGNALS]
    if not force and all(c in ds.column_names for c in columns):
        return False
    counts = [text_signals(p) for p in ds["prompt"]]
    add_task_columns(
        Path(task_dir), split, {SIGNAL_PREFIX + n: [c[n] for c in counts] for n in SURFACE_SIGNALS}
    )
    return True


def missing_model_columns(task_dir: str | Path, split: str, labels: bool, force: bool) -> tuple[bool, bool]:
    """Whether ``split`` still needs (the prompt perplexity, the label columns): what
    ``cache_model_signals`` computes, and whether the base model must be loaded at all."""
    have = set(load_text_task(Path(task_dir), split).column_names)
    return force or PPL_COLUMN not in have, labels and (force or not all(c in have for c in LABEL_COLUMNS))


def cache_model_signals(
    task_dir: str | Path,
    split: str,
    model: torch.nn.Module,
    tokenizer: Any,
    batch_size: int = 8,
    max_new_tokens: int = 96,
    labels: bool = True,
    force: bool = False,
    progress: bool = True,
) -> bool:
    """Cache ``signal_prompt_ppl`` of ``split`` and, with ``labels``, the columns of
    ``LABEL_COLUMNS`` (gold-answer NLL, one greedy decoding of the base model's answers,
    their score, the difficulty). Returns whether anything was computed."""
    from flexispeech.data.text import TextTaskSplit
    from flexispeech.models.causal_lm import FAMILY

    task_dir = Path(task_dir)
    want_ppl, want_labels = missing_model_columns(task_dir, split, labels, force)
    if not (want_ppl or want_labels):
        return False
    rows = TextTaskSplit(task_dir, split)
    columns: dict[str, list] = {}
    if want_ppl:
        prompts = [str(r["prompt"]) for r in rows.rows]
        columns[PPL_COLUMN] = prompt_perplexity(
            model, tokenizer, prompts, batch_size=batch_size, progress=progress
        )
    if want_labels:
        gold_nll = gold_answer_nll(model, tokenizer, rows, batch_size, progress)
        collate = make_collate(FAMILY, tokenizer, train=False)
        answers: list[str] = []
        model.eval()
        for start in tqdm(
            range(0, len(rows), batch_size), desc=f"base answers {split}", unit="batch", disable=not progress
        ):
            batch = collate([rows[i] for i in range(start, min(start + batch_size, len(rows)))])["inputs"]
            answers += FAMILY.generate(model, tokenizer, batch, max_new_tokens=max_new_tokens)
        correct = [score_answer(rows.metric, a, rows.golds(i)) for i, a in enumerate(answers)]
        difficulty = difficulty_with_tie_break(correct, gold_nll)
        columns |= dict(zip(LABEL_COLUMNS, (gold_nll, answers, correct, difficulty)))
    add_task_columns(task_dir, split, columns)
    return True


def cache_text_signals(
    task_dir: str | Path,
    splits: list[str],
    model_source: str | None = DEFAULT_SOURCE,
    batch_size: int = 8,
    max_new_tokens: int = 96,
    device: str = "cpu",
    force: bool = False,
    progress: bool = True,
    label_splits: list[str] | None = None,
) -> dict[str, list[str]]:
    """Cache every text signal of ``splits`` (model signals only when ``model_source``).

    ``label_splits`` (default: all of ``splits``) also get the base model's answers and the
    difficulty labels; the others only the router inputs. Labels are only read on the
    training split, and decoding the base model is the costly part on a CPU.

    Returns:
        split -> names of the ``signal_*`` columns the split now has.
    """
    from flexispeech.models.causal_lm import FAMILY

    label_splits = list(splits) if label_splits is None else label_splits
    for split in splits:
        cache_surface_signals(task_dir, split, force)
    if model_source is not None:
        model, tokenizer = None, None
        for split in splits:
            if not any(missing_model_columns(task_dir, split, split in label_splits, force)):
                continue
            if model is None:
                model, tokenizer = FAMILY.load(model_source, device=device)
            cache_model_signals(
                task_dir,
                split,
                model,
                tokenizer,
                batch_size,
                max_new_tokens,
                split in label_splits,
                force,
                progress,
            )
    return {
        s: [
            c[len(SIGNAL_PREFIX) :]
            for c in load_text_task(Path(task_dir), s).column_names
            if c.startswith(SIGNAL_PREFIX)
        ]
        for s in splits
    }


def run_text_signals(args: Any) -> int:
    """``flexispeech signals TASK_DIR`` on a text task (``--model`` defaults to the task's
    causal LM, ``smollm2-135m-instruct``; ``--model none`` computes the surface counts only)."""
    info = read_text_task_info(Path(args.corpus))
    splits = [s for s in args.splits.split(",") if s in info["splits"]]
    source = None if (args.model or "").lower() == "none" else (args.model or DEFAULT_SOURCE)
    label_splits = splits if args.label_splits is None else [s for s in args.label_splits.split(",") if s]
    have = cache_text_signals(
        args.corpus,
        splits,
        source,
        args.batch_size,
        args.max_new_tokens,
        args.device,
        args.force,
        label_splits=label_splits,
    )
    for split, names in have.items():
        print(
            f"{split}: signals {', '.join(names)}"
            + ("; base answers and difficulty labels cached" if source and split in label_splits else "")
        )
    return 0
