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
SCORE_ELEMENTS = 2**28  # logits per scoring chunk (1 GiB of float32)


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
        token_logp, entropy = _score(model, features.to(device, dtype=model.dtype), tokens.to(device))
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


def _score(
    model: nn.Module, features: torch.Tensor, tokens: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher-forced log-probability of each next token of ``tokens`` [B, L] and the entropy
    of each next-token distribution, both [B, L-1] float32 on the CPU.

    The encoder runs once; the decoder in row chunks, each reduced where its logits are:
    the log-probabilities of a whole batch ([B, L-1, vocabulary] floats) would take tens of
    gigabytes for 512 rows of 30-s transcripts (Whisper's vocabulary is 51,864 tokens).
    """
    encoded = model.get_encoder()(features).last_hidden_state
    width = tokens.shape[1] - 1
    chunk = max(1, SCORE_ELEMENTS // max(1, width * model.config.vocab_size))
    token_logp, entropy = [], []
    for start in range(0, tokens.shape[0], chunk):
        rows = slice(start, start + chunk)
        logits = model(encoder_outputs=(encoded[rows],), decoder_input_ids=tokens[rows, :-1]).logits.float()
        logp = torch.log_softmax(logits, dim=-1)  # [chunk, L-1, V]
        token_logp.append(logp.gather(-1, tokens[rows, 1:].unsqueeze(-1)).squeeze(-1).cpu())
        entropy.append((-(logp.exp() * logp).sum(-1)).cpu())
        del logits, logp
    return torch.cat(token_logp), torch.cat(entropy)


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
