"""Batched greedy Whisper decoding with segment timestamps: one row per stream, each row
with its own decoder prompt, token cap and (through ``use_ranks``) adapter rank.

transformers' ``generate`` takes one ``prompt_ids`` for the whole batch, so the streams of
a server could not share a decoding call through it: each stream's prompt is the committed
text that left its own buffer. This loop left-pads the rows' prefixes
(``<|startofprev|> prompt <|startoftranscript|> ...``) to one length, masks the padding
out of self-attention and gives every row its own positions (row ``i`` starts at 0 after
its padding), so each row decodes as it would alone. The logits go through the processors
that ``generate`` uses for timestamped short-form decoding (``_logits_processors``), with
the same ``begin_index`` for every row because the prefixes are aligned at their end.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from transformers import WhisperForConditionalGeneration

# transformers renamed forward's ``past_key_values`` to ``cache`` (5.2x; the old name warns
# until 5.40): pass the name this version declares.
_CACHE_KWARG = "cache" if "cache" in inspect.signature(WhisperForConditionalGeneration.forward).parameters else (
    "past_key_values")


def init_tokens(model: nn.Module) -> list[int]:
    """The tokens after the prompt: ``<|startoftranscript|>`` (+ ``<|en|><|transcribe|>`` on a
    multilingual model); with timestamps there is no ``<|notimestamps|>``."""
    gc = model.generation_config
    tokens = [int(gc.decoder_start_token_id)]
    if getattr(gc, "is_multilingual", False):
        tokens += [int(gc.lang_to_id["<|en|>"]), int(gc.task_to_id["transcribe"])]
    return tokens


def prompt_tokens(tokenizer: Any, prompt: str) -> list[int]:
    """``<|startofprev|>`` and the prompt's tokens, as ``get_prompt_ids`` makes them; [] for no prompt."""
    if not prompt:
        return []
    return [int(i) for i in tokenizer.get_prompt_ids(prompt, return_tensors="np").tolist()]


def _logits_processors(model: nn.Module, begin_index: int, device: torch.device) -> list[Any]:
    """What ``WhisperGenerationMixin._retrieve_logit_processors`` builds for greedy decoding
    with timestamps, in its order: suppression at the first step, suppressed tokens, then
    the timestamp rules (pairs, monotonic times, timestamps when they are likelier)."""
    from transformers.generation.logits_process import (
        SuppressTokensAtBeginLogitsProcessor,
        SuppressTokensLogitsProcessor,
        WhisperTimeStampLogitsProcessor,
    )

    gc = model.generation_config
    procs: list[Any] = []
    if gc.begin_suppress_tokens is not None:
        procs.append(SuppressTokensAtBeginLogitsProcessor(gc.begin_suppress_tokens, begin_index=begin_index, device=device))
    if gc.suppress_tokens is not None:
        procs.append(SuppressTokensLogitsProcessor(gc.suppress_tokens, device=device))
    procs.append(WhisperTimeStampLogitsProcessor(gc, begin_index=begin_index))
    return procs


def complete_segments(tokens: Sequence[int], timestamp_begin: int, eos: int) -> list[int]:
    """``tokens`` as ``generate`` returns them for short-form decoding with timestamps: without
    ``<|endoftext|>``, and cut after the last pair of consecutive timestamps (the end of the
    last complete segment) unless the sequence ends with a single timestamp; a sequence
    without such a pair is kept whole (transformers' ``_retrieve_segment``)."""
    seq = [t for t in tokens if t != eos]
    stamp = [t >= timestamp_begin for t in seq]
    if stamp[-2:] == [False, True]:
        return seq
    pairs = [i for i in range(1, len(seq)) if stamp[i - 1] and stamp[i]]
    return seq[: pairs[-1] + 1] if pairs else seq


def greedy_decode(
    model: nn.Module,
    features: torch.Tensor,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: Sequence[int],
) -> list[list[int]]:
    """Greedy tokens of every row with timestamps, token for token what ``generate`` returns
    for the row alone (``complete_segments``).

    Args:
        model: a ``WhisperForConditionalGeneration`` whose encoder window matches
            ``features``; run it inside ``use_ranks(model, ranks)`` for per-row ranks.
        features: log-mel features [B, n_mels, 2 * encoder positions].
        prompts: per row, ``prompt_tokens`` (may be empty).
        max_new_tokens: per row, the most tokens to generate.

    Returns B lists of generated token ids (the prefix not included).
    """
    device = next(model.parameters()).device
    batch = features.shape[0]
    eos = int(model.generation_config.eos_token_id)
    init = init_tokens(model)
    prefixes = [list(p) + init for p in prompts]
    width = max(len(p) for p in prefixes)
    # Left padding: every prefix ends at column ``width``, where generation begins for all rows.
    ids = torch.full((batch, width), eos, dtype=torch.long)
    mask = torch.zeros((batch, width), dtype=torch.long)
    for row, prefix in enumerate(prefixes):
        ids[row, width - len(prefix) :] = torch.tensor(prefix, dtype=torch.long)
        mask[row, width - len(prefix) :] = 1
    ids, mask = ids.to(device), mask.to(device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # [B, width]: 0 at each row's first real token
    # The decoder's positions end at max_target_positions: the longest prefix bounds every cap.
    room = int(model.config.max_target_positions) - int(positions[:, -1].max()) - 1
    caps = torch.tensor([max(0, min(int(n), room)) for n in max_new_tokens], device=device)
    procs = _logits_processors(model, width, device)
    cache = None
    step_ids, step_pos = ids, positions
    sequences = ids
    done = caps == 0
    generated: list[list[int]] = [[] for _ in range(batch)]
    with torch.no_grad():
        encoded = model.get_encoder()(features.to(device, dtype=model.dtype)).last_hidden_state
        for step in range(int(caps.max()) if batch else 0):
            out = model(
                encoder_outputs=(encoded,),
                decoder_input_ids=step_ids,
                decoder_attention_mask=mask,
                decoder_position_ids=step_pos,
                **{_CACHE_KWARG: cache},
                use_cache=True,
            )
            cache = out.past_key_values
            scores = out.logits[:, -1, :].float()
            for proc in procs:
                scores = proc(sequences, scores)
            token = scores.argmax(-1)
            token = torch.where(done, torch.full_like(token, eos), token)
            for row, t in enumerate(token.tolist()):
                if not done[row]:
                    generated[row].append(t)
            done = done | (token == eos) | (step + 1 >= caps)
            if bool(done.all()):
                break
            sequences = torch.cat([sequences, token[:, None]], dim=1)
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            step_ids, step_pos = token[:, None], step_pos[:, -1:] + 1
    timestamp_begin = int(model.generation_config.no_timestamps_token_id) + 1
    return [complete_segments(g, timestamp_begin, eos) for g in generated]
