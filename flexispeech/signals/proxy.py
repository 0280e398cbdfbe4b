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
        max_new_tokens: cap on the first-pass length (None: the model's own limit).

    Returns:
        ``{"proxy": [B], "proxy_entropy": [B]}`` (float32 on the CPU) and the base model's
        greedy transcripts (one pass gives both: the base WER and the proxy).
    """
    from flexispeech.models.whisper import FAMILY, FRAMES_PER_POSITION, encoder_positions

    device = next(model.parameters()).device
    window = encoder_positions(model) * FRAMES_PER_POSITION
    features = batch["input_features"][:, :, :window]
    first = {"input_features": features}  # the first window only: short-form decoding for every row
    with adapter_off(model), torch.no_grad():
        seqs = FAMILY.generate_ids(model, first, num_beams=1, max_new_tokens=max_new_tokens)
        tokens, targets_mask = _pad(seqs, processor)
        logits = model(
            input_features=features.to(device, dtype=model.dtype), decoder_input_ids=tokens[:, :-1].to(device)
        ).logits.float()
    logp = torch.log_softmax(logits, dim=-1).cpu()  # [B, L-1, V]
    targets = tokens[:, 1:]
    token_logp = logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # [B, L-1]
    entropy = -(logp.exp() * logp).sum(-1)  # [B, L-1]
    mask = targets_mask[:, 1:].float()
    count = mask.sum(1).clamp(min=1.0)
    texts = [
        t.strip()
        for t in processor.tokenizer.batch_decode([s.tolist() for s in seqs], skip_special_tokens=True)
    ]
    signals = {
        "proxy": (-(token_logp * mask).sum(1) / count).float(),
        "proxy_entropy": ((entropy * mask).sum(1) / count).float(),
    }
    return signals, texts


def _pad(seqs: list[torch.Tensor], processor: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad the decoded sequences to [B, L] and mark the scored positions: the
    tokens after the prompt prefix, up to and including the first end-of-text."""
    tok = processor.tokenizer
    eot = tok.convert_tokens_to_ids("<|endoftext|>")
    n_prefix = len(tok.prefix_tokens)  # <|startoftranscript|> ... <|notimestamps|>
    width = max(len(s) for s in seqs)
    tokens = torch.full((len(seqs), width), eot, dtype=torch.long)
    scored = torch.zeros((len(seqs), width), dtype=torch.bool)
    for i, seq in enumerate(seqs):
        tokens[i, : len(seq)] = seq
        end = len(seq)
        hits = (seq[n_prefix:] == eot).nonzero()
        if len(hits):
            end = n_prefix + int(hits[0]) + 1
        scored[i, n_prefix:end] = True
    return tokens, scored
