"""Run Whisper's encoder once per clip and rank while one batch is decoded several times.

The joint pick (``evaluation.joint``) decodes a batch at its routed ranks, decodes the
adapted rows again at rank 0, then scores the candidates teacher-forced at each rank: four
encoder passes per row where two (one per rank) give every number, and at a 30-s window the
encoder is most of a pass's cost. With the encoder not adapted (decoder-only adapters) one
pass per row is enough. ``reuse_encoder(model)`` keeps, for the length of a block, each
clip's encoder output under (its features, the rank its encoder layers ran at) and serves
later calls from it; rows not seen yet run through the encoder as before, as a sub-batch at
their own ranks.

Why a cache on the encoder and not an ``encoder_outputs`` argument: the encoder is called
from greedy decoding, transformers' ``generate`` (beam search, long form) and the scoring
pass, each behind the family's ``generate`` / ``label_logprob``; one block around a batch
serves all of them without threading tensors through every signature.

The key is the clip's log-mel itself (a digest of its bytes), so a row is found whichever
sub-batch or order it comes back in, and two calls share an output only when their inputs
are equal: the encoder is a deterministic function of features and rank in eval mode.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from transformers.modeling_outputs import BaseModelOutput

from flexispeech.lora.layer import FlexiLoraLinear
from flexispeech.lora.ranks import current_ranks, use_ranks


class EncoderCache:
    """Encoder outputs of one block, keyed by (features digest, rank or None).

    ``calls``/``rows_encoded``/``rows_reused`` count what the block did (for measurements
    and tests).
    """

    def __init__(self, rank_dependent: bool) -> None:
        self.rank_dependent = rank_dependent
        self.outputs: dict[tuple[bytes, int | None], torch.Tensor] = {}
        self.calls = 0
        self.rows_encoded = 0
        self.rows_reused = 0


def _digest(row: torch.Tensor) -> bytes:
    """A digest of one clip's features [n_mels, frames] on the host (dtype, shape, bytes)."""
    data = row.contiguous()
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{data.dtype}{tuple(data.shape)}".encode())
    h.update(data.view(torch.uint8).numpy().tobytes())
    return h.digest()


def _row_ranks(model: nn.Module, n: int) -> list[int | None]:
    """The rank each of ``n`` rows runs at (None: no ranks in force, the default rank)."""
    ranks = current_ranks(model)
    if ranks is None:
        return [None] * n
    values = [int(r) for r in ranks.tolist()]
    return values * n if len(values) == 1 else values


def _encoder_adapted(encoder: nn.Module) -> bool:
    return any(isinstance(m, FlexiLoraLinear) for m in encoder.modules())


@contextmanager
def reuse_encoder(model: nn.Module) -> Iterator[EncoderCache]:
    """Inside the block, ``model``'s encoder (a ``WhisperForConditionalGeneration``'s)
    returns a kept output for every clip it already encoded at the same rank.

    Only plain calls are served from the cache (``input_features`` [B, n_mels, frames], no
    attention or hidden-state outputs asked for, B equal to the ranks in force); any other
    call runs the encoder as is. Outputs are kept on the model's device until the block
    ends: one batch's rows at each rank decoded (e.g. 32 rows x 2 ranks x 1,500 x 384 fp32
    values, 150 MB, for tiny at a 30-s window). Not re-entrant: a nested block on the same
    model is refused.

    Yields the block's ``EncoderCache``.
    """
    encoder = model.get_encoder()
    if "forward" in encoder.__dict__:
        raise RuntimeError("reuse_encoder: the encoder's forward is already wrapped (nested block?)")
    cache = EncoderCache(rank_dependent=_encoder_adapted(encoder))
    original = encoder.forward

    def forward(input_features: torch.Tensor | None = None, *args: Any, **kwargs: Any) -> Any:
        plain = (
            input_features is not None
            and not encoder.training  # dropout: two passes differ, nothing to keep
            and not args
            and not kwargs.get("output_attentions")
            and not kwargs.get("output_hidden_states")
            and kwargs.get("return_dict", True) is not False
        )
        n = input_features.shape[0] if input_features is not None else 0
        ranks = _row_ranks(model, n) if plain else []
        if not plain or len(ranks) != n:
            return original(input_features, *args, **kwargs)
        cache.calls += 1
        host = input_features.detach().cpu()  # one copy for the batch's digests
        keys = [
            (_digest(row), rank if cache.rank_dependent else None)
            for row, rank in zip(host, ranks, strict=True)
        ]
        rows: list[int] = []  # the first row of each key not kept yet
        new: set[tuple[bytes, int | None]] = set()
        for i, key in enumerate(keys):
            if key not in cache.outputs and key not in new:
                new.add(key)
                rows.append(i)
        if rows:
            with use_ranks(model, rows=rows):
                encoded = original(input_features[rows], **kwargs).last_hidden_state
            for j, i in enumerate(rows):
                cache.outputs[keys[i]] = encoded[j]
        cache.rows_encoded += len(rows)
        cache.rows_reused += n - len(rows)
        return BaseModelOutput(last_hidden_state=torch.stack([cache.outputs[k] for k in keys]))

    encoder.forward = forward  # an instance attribute: the class's forward is left alone
    try:
        yield cache
    finally:
        del encoder.forward
        cache.outputs.clear()
