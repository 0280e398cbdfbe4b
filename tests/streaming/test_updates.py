"""One update of many streams at once (``decode_updates``, what the server's scheduler runs):
every stream gets the update it gets decoded alone, whatever else is in its batch (tiny
random Whisper with a routed adapter)."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
from routed_tiny import routed_tiny_transcriber

from flexispeech.audio import SAMPLE_RATE, load_audio
from flexispeech.streaming.online import OnlineTranscriber, StreamOptions
from flexispeech.streaming.transcriber import Transcriber
from flexispeech.streaming.updates import decode_updates

PROMPTS = ["", "the quick brown fox jumps over the lazy dog", "please", "the meeting"]


class Prompted(OnlineTranscriber):
    """A stream with a fixed decoder prompt (committed text that left its buffer)."""

    def __init__(self, transcriber: Transcriber, prompt: str) -> None:
        super().__init__(transcriber, StreamOptions(trim_s=30.0, max_buffer_s=30.0))
        self.fixed_prompt = prompt

    def prompt(self) -> str:
        return self.fixed_prompt


@pytest.fixture(scope="module")
def routed_transcriber(tmp_path_factory) -> Transcriber:
    # b_scale 1.0: ranks 2 and 8 decode differently, so a row served at the wrong rank shows
    return routed_tiny_transcriber(tmp_path_factory.mktemp("routed"), b_scale=1.0)


def buffers(assets_dir: Path) -> list[np.ndarray]:
    """Four buffers: clean and noisy (two ranks), 2.7 s to 12 s (two encoder windows)."""
    rng = np.random.default_rng(0)
    fox, stella, meeting = (load_audio(assets_dir / n) for n in ("fox.wav", "stella.wav", "meeting.wav"))

    def noisy(x: np.ndarray) -> np.ndarray:
        return x + rng.normal(0.0, np.sqrt(np.mean(x**2) / 10**0.5), x.size).astype(np.float32)

    long = np.concatenate([fox, stella, meeting, fox, np.zeros(SAMPLE_RATE // 2, dtype=np.float32)])
    return [fox, noisy(stella), long, noisy(np.concatenate([meeting, fox]))]


def clone(stream: OnlineTranscriber) -> OnlineTranscriber:
    """The stream's state (buffer, hypotheses) on the same model."""
    twin = copy.copy(stream)
    twin.audio, twin.hyp = stream.audio.copy(), copy.deepcopy(stream.hyp)
    return twin


def test_each_stream_in_a_batch_gets_the_update_it_gets_alone(routed_transcriber, assets_dir) -> None:
    """Mixed prompts (left padding), ranks (rows re-ordered by rank) and encoder windows
    (rows grouped): each stream's update equals its update decoded alone."""
    streams = []
    for audio, prompt in zip(buffers(assets_dir), PROMPTS):
        stream = Prompted(routed_transcriber, prompt)
        stream.insert_audio_chunk(audio)
        streams.append(stream)
    requests = [s.request() for s in streams]
    assert len({r.positions for r in requests}) == 2 and len({len(r.prompt) for r in requests}) == 4
    alone = [decode_updates(routed_transcriber, [clone(s)])[0] for s in streams]
    together = decode_updates(routed_transcriber, streams)
    assert {u.rank for u in together} == {2, 8}
    for a, b in zip(alone, together):
        assert (a.rank, a.committed, a.tentative) == (b.rank, b.committed, b.tentative)
    assert len({tuple(w.text for w in u.tentative) for u in together}) > 1  # the rows decoded differently
