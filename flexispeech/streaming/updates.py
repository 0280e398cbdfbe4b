"""One update of many streams at once: route every buffer, encode and decode them together.

This is what the multi-stream scheduler runs for every batch, and what
``OnlineTranscriber.process_iter`` runs for a single stream (a batch of one), so one
stream alone and one stream among many take the same path:

1. each stream that has enough audio says what to decode (``OnlineTranscriber.request``);
2. the buffers' signals are stacked and routed by the batch step of training and
   evaluation (``flexispeech.training.batch.route_rows``, router = ``Transcriber.ranks_for``),
   which also puts the rows in rank order;
3. rows are grouped by encoder window (buffers up to 10 s share 500 positions, up to
   20 s 1000: at most three groups), and each group is one encoder pass and one batched
   greedy decoding (``flexispeech.streaming.decode``) under ``use_ranks`` with the rows'
   own ranks;
4. each stream applies its tokens (local agreement, trim) and returns its ``Update``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from flexispeech.audio import SAMPLE_RATE
from flexispeech.lora import use_ranks
from flexispeech.signals.proxy import PROXY_KEYS
from flexispeech.streaming.transcriber import Transcriber
from flexispeech.training.batch import Batch, route_rows


@dataclass(frozen=True)
class DecodeRequest:
    """One stream's share of a batched decoding (``OnlineTranscriber.request``)."""

    audio: np.ndarray  # [T] the buffer, 16 kHz
    positions: int  # encoder window for it (streams decode in groups of one window)
    prompt: list[int]  # <|startofprev|> + committed text before the buffer; [] for none
    max_new_tokens: int  # token cap for this buffer length
    draft: tuple[int, ...] = ()  # tokens the decoding likely begins with (``greedy_decode``'s drafts)


class Stream(Protocol):
    """What a batch needs of a stream (``OnlineTranscriber`` is one)."""

    def wants_decoding(self, final: bool) -> bool: ...

    def request(self) -> DecodeRequest: ...

    def apply(
        self,
        tokens: list[int] | None,
        rank: int | None,
        signals: dict[str, float],
        final: bool,
        compute_s: float,
    ) -> Any: ...


def route_buffers(transcriber: Transcriber, buffers: Sequence[np.ndarray]) -> Batch[int]:
    """The batch step for audio buffers [T_i]: their signals (duration, snr_db,
    speech_activity) routed by ``transcriber.ranks_for`` (the perplexity proxy, which would
    cost a second decoding, gets the router's neutral value), rows in rank order.
    ``Batch.rows`` are indices into ``buffers``; ranks None without an adapter."""
    from flexispeech.signals.audio import audio_signals

    rows = [audio_signals(b, SAMPLE_RATE) for b in buffers]
    signals = {k: torch.tensor([r[k] for r in rows], dtype=torch.float32) for k in rows[0]}
    router = (lambda s, n: transcriber.ranks_for(s, neutral=PROXY_KEYS)) if transcriber.has_adapter else None  # noqa: E731
    return route_rows(range(len(buffers)), signals, router)


def decode_updates(
    transcriber: Transcriber, streams: Sequence[Stream], final: Sequence[bool] | None = None
) -> list[Any]:
    """One update of every stream (``final[i]``: its last one, as ``finish``), decoded as one
    batch; returns what each stream's ``apply`` returns (an ``Update``), in the order of
    ``streams``.

    A stream may appear once per call. Every update of the batch reports the batch's wall
    time as its ``compute_s``.
    """
    from flexispeech.models.whisper import encoder_positions, set_audio_ctx
    from flexispeech.streaming.decode import greedy_decode

    started = time.perf_counter()
    final = list(final) if final is not None else [False] * len(streams)
    todo = [i for i, s in enumerate(streams) if s.wants_decoding(final[i])]
    tokens: dict[int, list[int]] = {}
    ranks: dict[int, int | None] = {}
    signals: dict[int, dict[str, float]] = {}
    if todo:
        requests = {i: streams[i].request() for i in todo}
        batch = route_buffers(transcriber, [requests[i].audio for i in todo])
        model, processor = transcriber.model, transcriber.processor
        sorted_rows = [todo[j] for j in batch.rows]  # stream indices in rank order
        for pos, i in enumerate(sorted_rows):
            ranks[i] = None if batch.ranks is None else int(batch.ranks[pos])
            signals[i] = {k: float(v[pos]) for k, v in batch.signals.items()}
        for window in sorted({requests[i].positions for i in todo}):
            group = [pos for pos, i in enumerate(sorted_rows) if requests[i].positions == window]
            members = [sorted_rows[pos] for pos in group]
            if window != encoder_positions(model):
                set_audio_ctx(model, window, processor)
            audio = [requests[i].audio for i in members]
            features = processor.feature_extractor(
                audio, sampling_rate=SAMPLE_RATE, return_tensors="pt"
            ).input_features
            prompts = [requests[i].prompt for i in members]
            caps = [requests[i].max_new_tokens for i in members]
            drafts = [requests[i].draft for i in members]
            if batch.ranks is None:
                out = greedy_decode(model, features, prompts, caps, stop_loops=True, drafts=drafts)
            else:
                with use_ranks(model, batch.ranks), use_ranks(model, rows=group):
                    out = greedy_decode(model, features, prompts, caps, stop_loops=True, drafts=drafts)
            tokens.update(zip(members, out))
    compute_s = time.perf_counter() - started
    return [
        s.apply(tokens.get(i), ranks.get(i), signals.get(i, {}), final[i], compute_s if i in tokens else 0.0)
        for i, s in enumerate(streams)
    ]
