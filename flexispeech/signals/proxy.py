"""The perplexity proxy: how confident the *base* model is on its own first-pass transcript.

A router signal that needs no reference: decode greedily with the adapter off, then score
the decoded tokens with the same model (one teacher-forced pass). Hard inputs (noise,
unusual words, fast speech) give low-probability, high-entropy tokens. Signals, per
example:

* ``proxy``: mean negative log-probability of the decoded tokens (nats per token; the
  log of the first pass's perplexity; higher = harder).
* ``proxy_entropy``: mean entropy of the next-token distribution at those positions (nats).

Only the first encoder window of a clip is used (30 s, or ``audio_ctx``): a complexity
signal does not need the whole of a long recording.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from flexispeech.lora.ranks import adapter_off

PROXY_KEYS = ("proxy", "proxy_entropy")


def first_pass_confidence(
    model: nn.Module, processor: Any, batch: dict[str, torch.Tensor], max_new_tokens: int | None = None
) -> dict[str, torch.Tensor]:
    """The proxy signals of ``first_pass`` (see there), without the transcripts."""
    return first_pass(model, processor, batch, max_new_tokens)[0]


def first_pass(
    model: nn.Module, processor: Any, batch: dict[str, torch.Tensor], max_new_tokens: int | None = None
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Proxy signals of a Whisper batch (from ``whisper.FAMILY.collate``), adapter off.

    Args:
        model: a Whisper model, with or without Flexi-LoRA adapters (they are bypassed).
        processor: its ``WhisperProcessor``.
        batch: ``input_features`` [B, n_mels, frames] (and optionally ``num_frames`` [B]).
        max_new_tokens: cap on the first-pass length (None: ``whisper.decode_budget``, the
            budget evaluation decodes with: at the full window, that of the longest clip).

    Returns:
        ``{"proxy": [B], "proxy_entropy": [B]}`` (float32 on the CPU) and the base model's
        greedy transcripts (one pass gives both: the base WER and the proxy).

    The scores come from the decoding pass itself (``whisper_greedy``): each chosen token's
    log-probability and its distribution's entropy, from the unsuppressed logits, which is
    what a teacher-forced pass over the transcript would compute, without running it.
    """
    from flexispeech.models.whisper import FRAMES_PER_POSITION, decode_budget, encoder_positions, first_window
    from flexispeech.models.whisper_greedy import greedy_decode

    window = encoder_positions(model) * FRAMES_PER_POSITION
    features = first_window(batch["input_features"], window)  # a long clip's first window only
    frames = batch.get("num_frames")
    if max_new_tokens is None:
        lengths = [window] * features.shape[0] if frames is None else [int(f) for f in frames]
        max_new_tokens = decode_budget(model, lengths)
    with adapter_off(model), torch.no_grad():
        out = greedy_decode(model, features, max_new_tokens)
    texts = [
        t.strip()
        for t in processor.tokenizer.batch_decode(
            [s.tolist() for s in out.sequences], skip_special_tokens=True
        )
    ]
    signals = {"proxy": out.proxy.float(), "proxy_entropy": out.proxy_entropy.float()}
    return signals, texts
