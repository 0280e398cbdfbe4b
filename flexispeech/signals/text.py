"""Complexity signals of a text prompt, for routing a causal LM's LoRA rank per example.

``text_signals`` is cheap surface counting (no model). ``prompt_perplexity`` scores the
prompt under the base causal LM: a prompt the model finds surprising is a candidate for a
larger rank.

``n_question_words`` counts the words of the question alone: after the last ``Question:``
marker (the reading-comprehension prompts put a passage first), else the last sentence. In
multi-hop QA the passage's length says little about the question's depth, while each hop
adds a clause ("the population of the town where the company that X works for is
headquartered"), so the question's own length is the length signal that tracks it.

Operator counting (``n_operators``): the arithmetic symbols ``+ - * / × ÷ % =`` (a ``-``
only between spaces or before a digit, so hyphenated words do not count), plus the words
that state an operation in word problems: plus, minus, times, divided, multiplied,
percent, twice, double, triple, half, each, per, every, split, share(s/d). "each", "per"
and "every" are kept because in word problems they almost always mark a multiplication or
a rate ("3 boxes of 12 each", "40 km per hour"); the price is a few false hits in prose,
which a router trained on the signal can discount.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

from flexispeech.evaluation.text_metrics import NUMBER_RE

OPERATOR_WORDS = frozenset(
    {
        "plus",
        "minus",
        "times",
        "divided",
        "multiplied",
        "percent",
        "twice",
        "double",
        "triple",
        "half",
        "each",
        "per",
        "every",
        "split",
        "share",
        "shares",
        "shared",
    }
)
_OPERATOR_SYMBOLS = re.compile(r"[+*/×÷%=]|(?:(?<=\s)|^)-(?=\s|\d)")
_WORD = re.compile(r"[^\W_]+(?:['’][^\W_]+)*")  # letters/digits, with inner apostrophes
_SENTENCE_END = re.compile(r"[.!?]+(?=\s|$)|\n\s*\n|\n(?=\S)")
_QUESTION_MARKER = re.compile(r"\bquestion\s*:", re.IGNORECASE)


def _n_words(text: str) -> int:
    """Whitespace-separated tokens holding a letter or digit."""
    return sum(1 for t in text.split() if any(ch.isalnum() for ch in t))


def question_text(prompt: str) -> str:
    """The question of ``prompt``: the text after the last ``Question:`` marker, else the
    last sentence without its end mark (``""`` for blank text)."""
    markers = list(_QUESTION_MARKER.finditer(prompt))
    if markers:
        return prompt[markers[-1].end() :].strip()
    sentences = [s for s in _SENTENCE_END.split(prompt.strip()) if s and s.strip()]
    return sentences[-1].strip() if sentences else ""


def text_signals(prompt: str) -> dict[str, float]:
    """Surface complexity counts of ``prompt``.

    Returns:
        ``n_words`` (whitespace-separated tokens holding a letter or digit, so "$1,250.50"
        is one word and a lone "×" none), ``n_chars`` (all characters), ``n_digits``,
        ``n_numbers`` (numbers as written, "1,234.5" is one), ``n_operators`` (see the module
        docstring), ``n_sentences`` (terminated by . ! ? or a line break; a trailing
        unterminated sentence counts; 0 for blank text), ``n_question_words`` (words of
        :func:`question_text`). All as floats.
    """
    words = _WORD.findall(prompt)  # for operator words: "half-price" -> half, price
    stripped = prompt.strip()
    sentences = [s for s in _SENTENCE_END.split(stripped) if s and s.strip()]
    return {
        "n_words": float(_n_words(prompt)),
        "n_chars": float(len(prompt)),
        "n_digits": float(sum(ch.isdigit() for ch in prompt)),
        "n_numbers": float(sum(1 for _ in NUMBER_RE.finditer(prompt))),
        "n_operators": float(
            len(_OPERATOR_SYMBOLS.findall(prompt)) + sum(w.lower() in OPERATOR_WORDS for w in words)
        ),
        "n_sentences": float(len(sentences)),
        "n_question_words": float(_n_words(question_text(prompt))),
    }


def prompt_perplexity(
    model: Any, tokenizer: Any, prompts: Sequence[str], batch_size: int = 8, progress: bool = False
) -> list[float]:
    """Mean next-token negative log-likelihood (nats) of each prompt under a causal LM.

    This is log-perplexity (``exp`` of it is the perplexity); the log is kept because it is
    additive and better scaled as a router feature. Prompts are tokenised one by one (with
    the tokenizer's special tokens) and right-padded per batch, so every prompt sees the
    same positions as it would alone; padded positions are masked out of attention and of
    the mean. A prompt with fewer than two tokens has nothing to predict and scores NaN.

    Args:
        model: a ``transformers`` causal LM (``logits`` [B, L, V] from ``input_ids`` [B, L]
            and ``attention_mask`` [B, L]); run in eval mode under ``torch.no_grad``.
        tokenizer: its tokenizer (``tokenizer(text)["input_ids"]`` -> list[int]).
        prompts: the texts to score.
        batch_size: prompts per forward pass.
        progress: show a progress bar.

    Returns:
        one float per prompt, in order.
    """
    import torch
    from tqdm.auto import tqdm

    device = next(model.parameters()).device
    ids = [list(tokenizer(p)["input_ids"]) for p in prompts]
    scores: list[float] = []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in tqdm(
                range(0, len(ids), batch_size), desc="prompt perplexity", unit="batch", disable=not progress
            ):
                batch = ids[start : start + batch_size]
                length = max(len(x) for x in batch)
                input_ids = torch.zeros(len(batch), length, dtype=torch.long)
                mask = torch.zeros(len(batch), length, dtype=torch.long)
                for i, x in enumerate(batch):
                    input_ids[i, : len(x)] = torch.tensor(x, dtype=torch.long)
                    mask[i, : len(x)] = 1
                input_ids, mask = input_ids.to(device), mask.to(device)
                logits = model(input_ids=input_ids, attention_mask=mask).logits.float()  # [B, L, V]
                logprobs = torch.log_softmax(logits[:, :-1], dim=-1)  # predicts tokens 1..L-1
                target_lp = logprobs.gather(-1, input_ids[:, 1:, None]).squeeze(-1)  # [B, L-1]
                target_mask = mask[:, 1:].to(target_lp.dtype)
                n_targets = target_mask.sum(dim=1)
                nll = -(target_lp * target_mask).sum(dim=1) / n_targets.clamp(min=1)
                scores += [float(v) if n > 0 else math.nan for v, n in zip(nll.tolist(), n_targets.tolist())]
    finally:
        model.train(was_training)
    return scores
