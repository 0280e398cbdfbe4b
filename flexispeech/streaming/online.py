"""Online (streaming) transcription with local agreement and a rank routed per update.

``OnlineTranscriber`` follows whisper_streaming's interface and policy:

* ``insert_audio_chunk(samples)`` appends 16 kHz audio to a buffer;
* ``process_iter()`` re-transcribes the whole buffer (Whisper with segment timestamps),
  commits the words two consecutive hypotheses agree on (``flexispeech.streaming.agreement``) and
  returns an ``Update``: the newly committed words and the tentative rest;
* ``finish()`` commits what is left at the end of the stream.

The buffer is trimmed at the end of a committed segment (Whisper ends its segments at
sentence ends) once it is longer than ``trim_s`` (and cut hard at ``max_buffer_s``), so
the cost of an update stays bounded; committed text that left the buffer is carried forward as the decoder prompt.

Ranks: every update routes its own rank from the signals of the current buffer (duration,
snr_db, speech_activity), so a noisy stretch of the stream gets more adapter capacity than
a clean one. The perplexity proxy costs a second decoding pass per update and is not
computed here: a router that reads it gets its ``neutral_value`` for it (the mean it
standardises the signal by, a z-score of 0).

Encoder window (``audio_ctx="auto"``): the encoder runs on the buffer length rounded up to
``CTX_STEP_S`` (10 s = 500 positions) instead of 30 s, about 3x less encoder work for
buffers up to 10 s; docs/streaming.md measures what it does to WER.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from flexispeech.audio import SAMPLE_RATE
from flexispeech.errors import ConfigError
from flexispeech.streaming.agreement import HypothesisBuffer, Word, words_text
from flexispeech.streaming.transcriber import Transcriber
from flexispeech.streaming.updates import DecodeRequest, decode_updates, route_buffers

SECONDS_PER_TIMESTAMP = 0.02  # Whisper's timestamp tokens step by one encoder position (20 ms)
CTX_STEP_S = 10.0  # "auto" encoder window: buffer length rounded up to 10 s (500 positions)
FULL_WINDOW_S = 30.0
TOKENS_PER_S = 8  # cap on generated tokens per buffer second (speech is ~4/s with timestamps):
TOKENS_BASE = 10  # stops the repetition loops a short window sometimes falls into


@dataclass(frozen=True)
class StreamOptions:
    """How the online transcriber buffers, trims and decodes."""

    min_buffer_s: float = 1.0  # Whisper needs about a second of context: shorter buffers wait
    trim_s: float = 8.0  # buffer longer than this: cut at the last committed segment end
    max_buffer_s: float = 16.0  # buffer longer than this: cut anyway (commits without agreement)
    prompt_chars: int = 200  # committed text before the buffer given as the decoder prompt
    audio_ctx: str | int = "auto"  # "auto", or encoder positions (1500 = the full 30 s)


@dataclass(frozen=True)
class _Decoded:
    """What an update read from its buffer, kept for an update of the same buffer and
    prompt: ``key`` is (buffer start, buffer samples, prompt)."""

    key: tuple[float, int, str]
    tokens: list[int]
    words: list[Word]
    segment_ends: list[tuple[int, float]]
    rank: int | None
    signals: dict[str, float]


@dataclass
class Update:
    """The result of one ``process_iter`` / ``finish``."""

    committed: list[Word]  # words that became final in this update
    tentative: list[Word]  # the rest of the current hypothesis (may still change)
    rank: int | None  # adapter rank of this update; None = the base model
    signals: dict[str, float] = field(default_factory=dict)  # of the buffer that was decoded
    audio_s: float = 0.0  # seconds of audio received so far
    buffer_start_s: float = 0.0  # stream time of the buffer's first sample
    buffer_s: float = 0.0  # buffer length when decoded
    compute_s: float = 0.0  # wall-clock seconds this update took
    final: bool = False  # the last update of the stream

    def to_dict(self, committed_text: str) -> dict[str, Any]:
        """A JSON-ready event; ``committed_text``: everything committed so far."""
        return {
            "audio_s": round(self.audio_s, 3),
            "rank": self.rank,
            "committed": [
                {"start": round(w.start, 2), "end": round(w.end, 2), "text": w.text} for w in self.committed
            ],
            "committed_text": committed_text,
            "tentative": words_text(self.tentative),
            "buffer": [round(self.buffer_start_s, 2), round(self.buffer_start_s + self.buffer_s, 2)],
            "signals": {k: round(v, 3) for k, v in self.signals.items()},
            "compute_s": round(self.compute_s, 3),
            "final": self.final,
        }


class OnlineTranscriber:
    """Streaming transcription on top of a loaded Whisper ``Transcriber``."""

    def __init__(self, transcriber: Transcriber, options: StreamOptions | None = None) -> None:
        if transcriber.family.name != "whisper":
            raise ConfigError(f"streaming needs a Whisper model, got the {transcriber.family.name} family")
        if transcriber.num_beams != 1:
            raise ConfigError("streaming decodes greedily: use num_beams=1")
        if "embedding" in transcriber.needed_signals():  # an embedding router or a novelty gate
            raise ConfigError(
                "the adapter's router reads the pooled encoder embedding, which streaming does not "
                "compute per update; stream it at a fixed --rank, or transcribe files instead"
            )
        self.t = transcriber
        self.options = options or StreamOptions()
        if not (isinstance(self.options.audio_ctx, int) or self.options.audio_ctx == "auto"):
            raise ConfigError(
                f"audio_ctx must be 'auto' or a number of positions, got {self.options.audio_ctx!r}"
            )
        tok = transcriber.processor.tokenizer
        self.timestamp_begin = int(transcriber.model.generation_config.no_timestamps_token_id) + 1
        self.special_ids = set(tok.all_special_ids)
        self.reset()

    def reset(self) -> None:
        """Forget the stream: an empty buffer at time 0."""
        self.audio = np.zeros(0, dtype=np.float32)  # [T] the buffer
        self.buffer_start = 0.0  # stream seconds of audio[0]
        self.received = 0  # samples received in all
        self.hyp = HypothesisBuffer()
        self._decoded: _Decoded | None = None  # the last decoding, reused by an unchanged buffer

    @property
    def committed_text(self) -> str:
        """Everything committed so far."""
        return words_text(self.hyp.committed)

    def insert_audio_chunk(self, samples: np.ndarray) -> None:
        """Append 16 kHz mono float32 samples [T] to the buffer."""
        samples = np.asarray(samples, dtype=np.float32).reshape(-1)
        self.audio = np.concatenate([self.audio, samples])
        self.received += samples.size

    def process_iter(self) -> Update:
        """Decode the buffer, commit what two consecutive hypotheses agree on, trim."""
        return decode_updates(self.t, [self])[0]

    def finish(self) -> Update:
        """End of stream: decode what is left once more and commit all of it."""
        return decode_updates(self.t, [self], final=[True])[0]

    # -- one update in three steps: what to decode, (batched decoding), what it means ---------

    def wants_decoding(self, final: bool) -> bool:
        """Whether this update decodes the buffer: a final one if there is audio at all, any
        other once the buffer holds ``min_buffer_s``; neither when the previous update
        decoded this very buffer with this prompt (``apply`` reuses what it read)."""
        if self._reusable() is not None:
            return False
        if final:
            return self.audio.size > 0
        return self.audio.size / SAMPLE_RATE >= self.options.min_buffer_s

    def _key(self) -> tuple[float, int, str]:
        return (self.buffer_start, self.audio.size, self.prompt())

    def _reusable(self) -> _Decoded | None:
        """The previous decoding if it was of this buffer and prompt: greedy decoding of the
        same input gives the same tokens again. This is the final update of a microphone
        stream, which comes after the last audio's update and brings no audio of its own:
        decoding it again cost a whole decoding at the end of every stream."""
        decoded = self._decoded
        return decoded if decoded is not None and decoded.key == self._key() else None

    def request(self) -> DecodeRequest:
        """What the batched decoding needs of this stream's buffer."""
        from flexispeech.streaming.decode import prompt_tokens

        buffer_s = self.audio.size / SAMPLE_RATE
        prompt = self.prompt()
        # The previous decoding of a buffer with the same start and prompt is this one's
        # draft: most of its tokens come back (73 % of a stream's, docs/streaming.md), checked in one pass.
        last = self._decoded
        same_start = last is not None and (last.key[0], last.key[2]) == (self.buffer_start, prompt)
        return DecodeRequest(
            audio=self.audio,
            positions=self.window_positions(buffer_s),
            prompt=prompt_tokens(self.t.processor.tokenizer, prompt),
            max_new_tokens=int(TOKENS_BASE + TOKENS_PER_S * buffer_s),
            draft=tuple(last.tokens) if same_start and last is not None else (),
        )

    def apply(
        self,
        tokens: list[int] | None,
        rank: int | None,
        signals: dict[str, float],
        final: bool,
        compute_s: float,
    ) -> Update:
        """Take the decoded ``tokens`` of the buffer (None: nothing was decoded, or the
        previous decoding of this buffer is reused) and return this update: agreement, then a
        trim (or, when ``final``, commit everything)."""
        start, buffer_s = self.buffer_start, self.audio.size / SAMPLE_RATE
        reused = self._reusable() if tokens is None else None
        if reused is not None:
            words, segment_ends = reused.words, reused.segment_ends
            rank, signals, compute_s = reused.rank, reused.signals, 0.0
        elif tokens is not None:
            words, segment_ends = self.parse(tokens, buffer_s)
            self._decoded = _Decoded(self._key(), tokens, words, segment_ends, rank, signals)
        decoded = tokens is not None or reused is not None
        if decoded:
            self.hyp.insert(words)
        if final:
            committed = self.hyp.force()
            self.buffer_start += buffer_s
            self.audio = self.audio[:0]
            self.hyp.forget_until(self.buffer_start)
            return Update(
                committed, [], rank, signals, self._audio_s(), start, buffer_s, compute_s, final=True
            )
        if not decoded:
            return Update(
                [], self.hyp.tentative, None, audio_s=self._audio_s(), buffer_start_s=start, buffer_s=buffer_s
            )
        committed = self.hyp.flush()
        committed += self._trim(segment_ends)
        return Update(
            committed, self.hyp.tentative, rank, signals, self._audio_s(), start, buffer_s, compute_s
        )

    # -- decoding ------------------------------------------------------------------------

    def route(self, audio: np.ndarray) -> tuple[int | None, dict[str, float]]:
        """Rank for a buffer [T] (None without an adapter) and the signals it was routed on."""
        batch = route_buffers(self.t, [audio])
        signals = {k: float(v[0]) for k, v in batch.signals.items()}
        return (None if batch.ranks is None else int(batch.ranks[0])), signals

    def window_positions(self, buffer_s: float) -> int:
        """Encoder positions for a buffer of ``buffer_s`` seconds (see ``audio_ctx``)."""
        if self.options.audio_ctx != "auto":
            return int(self.options.audio_ctx)
        seconds = min(FULL_WINDOW_S, CTX_STEP_S * max(1, math.ceil(buffer_s / CTX_STEP_S)))
        return int(round(seconds / SECONDS_PER_TIMESTAMP))

    def parse(self, ids: list[int], buffer_s: float) -> tuple[list[Word], list[tuple[int, float]]]:
        """Words and segment ends of a generated sequence (see ``transcribe_buffer``)."""
        tok = self.t.processor.tokenizer
        sot = tok.convert_tokens_to_ids("<|startoftranscript|>")
        if sot in ids:  # a prompt (<|startofprev|> ...) comes before <|startoftranscript|>
            ids = ids[ids.index(sot) + 1 :]
        words: list[Word] = []
        ends: list[tuple[int, float]] = []
        text_ids: list[int] = []
        seg_start = 0.0
        for i in ids + [None]:  # None: flush an unterminated last segment
            if i is not None and i < self.timestamp_begin and i not in self.special_ids:
                text_ids.append(i)
                continue
            stamp = (
                buffer_s
                if i is None or i < self.timestamp_begin
                else (i - self.timestamp_begin) * SECONDS_PER_TIMESTAMP
            )
            if text_ids:
                end = min(max(stamp, seg_start), buffer_s)
                words += self._spread(tok.decode(text_ids, skip_special_tokens=True).split(), seg_start, end)
                if i is not None and i >= self.timestamp_begin:
                    ends.append((len(words), self.buffer_start + end))
                text_ids = []
            if i is not None and i >= self.timestamp_begin:
                seg_start = min(stamp, buffer_s)
        return words, ends

    def _spread(self, texts: list[str], start: float, end: float) -> list[Word]:
        """Words over [start, end] (buffer seconds) in proportion to their length."""
        total = sum(len(t) for t in texts) or 1
        out, t = [], start
        for text in texts:
            step = (end - start) * len(text) / total
            out.append(Word(self.buffer_start + t, self.buffer_start + t + step, text))
            t += step
        return out

    def prompt(self) -> str:
        """The last ``prompt_chars`` of committed text that is no longer in the buffer."""
        hyp = self.hyp
        before = hyp.committed[: len(hyp.committed) - hyp.in_buffer]
        return words_text(before)[-self.options.prompt_chars :].lstrip()

    # -- buffer management -----------------------------------------------------------------

    def _trim(self, segment_ends: list[tuple[int, float]]) -> list[Word]:
        """Cut the buffer at the last committed segment end once it is longer than
        ``trim_s``; past ``max_buffer_s`` cut even without one. Returns words committed by
        a forced cut."""
        buffer_s = self.audio.size / SAMPLE_RATE
        if buffer_s <= self.options.trim_s:
            return []
        held = self.hyp.committed[len(self.hyp.committed) - self.hyp.in_buffer :]
        n_held = len(held)
        # Segment ends are Whisper's own timestamps, which it puts at sentence ends; a word
        # ending in "." is no safe cut: "Dr." is one, and word times are only interpolated.
        cuts = [end for count, end in segment_ends if count <= n_held]
        if cuts:
            self._cut(max(cuts))
        buffer_s = self.audio.size / SAMPLE_RATE
        if buffer_s <= self.options.max_buffer_s:
            return []
        # No agreement for a whole buffer (noise, a repetition loop): keep what is there and
        # cut to at most trim_s, so that the cost of an update stays bounded.
        forced = self.hyp.force()
        end = self.buffer_start + buffer_s
        self._cut(max([w.end for w in forced[-1:]] + [end - self.options.trim_s]))
        return forced

    def _cut(self, time_s: float) -> None:
        """Drop the buffer's audio before stream time ``time_s``."""
        n = int(round((time_s - self.buffer_start) * SAMPLE_RATE))
        n = max(0, min(n, self.audio.size))
        self.audio = self.audio[n:]
        self.buffer_start += n / SAMPLE_RATE
        self.hyp.forget_until(self.buffer_start)

    def _audio_s(self) -> float:
        return self.received / SAMPLE_RATE
