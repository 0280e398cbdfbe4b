"""An update of a buffer its previous update decoded (the final update of a microphone
stream, which brings no audio) reuses that decoding: same result, no decoding, and through
the scheduler it is made at once instead of waiting for the batch decoding at the time."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from routed_tiny import routed_tiny_transcriber

import flexispeech.streaming.updates as updates_module
from flexispeech.audio import SAMPLE_RATE, load_audio
from flexispeech.streaming.online import OnlineTranscriber, StreamOptions
from flexispeech.streaming.scheduler import Scheduler

OPTIONS = StreamOptions()  # the "auto" window: this random model leaves words tentative at 4 s


@pytest.fixture(scope="module")
def transcriber(tmp_path_factory):
    return routed_tiny_transcriber(tmp_path_factory.mktemp("routed"))


@pytest.fixture(scope="module")
def audio(assets_dir: Path) -> np.ndarray:
    return np.concatenate([load_audio(assets_dir / n) for n in ("fox.wav", "stella.wav")])


def _decodings(monkeypatch) -> list[int]:
    """Counts the rows decoded by ``greedy_decode`` from now on."""
    from flexispeech.streaming import decode

    rows: list[int] = []
    real = decode.greedy_decode

    def counting(model, features, *args, **kwargs):
        rows.append(features.shape[0])
        return real(model, features, *args, **kwargs)

    monkeypatch.setattr(decode, "greedy_decode", counting)
    return rows


def _fed(transcriber, audio: np.ndarray) -> OnlineTranscriber:
    online = OnlineTranscriber(transcriber, OPTIONS)
    for start in range(0, audio.size, SAMPLE_RATE):
        online.insert_audio_chunk(audio[start : start + SAMPLE_RATE])
        online.process_iter()
    return online


def test_a_final_update_without_new_audio_reuses_the_last_decoding(transcriber, audio, monkeypatch) -> None:
    audio = audio[: 4 * SAMPLE_RATE]
    again = _fed(transcriber, audio)
    monkeypatch.setattr(OnlineTranscriber, "_reusable", lambda self: None)  # decodes the buffer again
    expected = again.finish()
    monkeypatch.undo()
    online = _fed(transcriber, audio)
    rows = _decodings(monkeypatch)
    got = online.finish()
    assert rows == []  # nothing decoded
    assert got.committed and online.committed_text == again.committed_text  # words were left to commit
    assert (got.committed, got.rank, got.signals, got.buffer_s) == (
        expected.committed,
        expected.rank,
        expected.signals,
        expected.buffer_s,
    )
    assert got.compute_s == 0.0


def test_new_audio_or_a_reset_decodes_again(transcriber, audio, monkeypatch) -> None:
    online = _fed(transcriber, audio[: 3 * SAMPLE_RATE])
    rows = _decodings(monkeypatch)
    online.insert_audio_chunk(audio[3 * SAMPLE_RATE : 4 * SAMPLE_RATE])
    online.finish()
    assert rows == [1]
    online.reset()
    online.insert_audio_chunk(audio[: 4 * SAMPLE_RATE])
    online.finish()
    assert rows == [1, 1]


def test_the_scheduler_makes_an_update_without_decoding_at_once(transcriber, audio, monkeypatch) -> None:
    """The final update comes back from ``submit`` done, without the worker (which is
    decoding another stream's update all the while)."""
    import threading

    online = OnlineTranscriber(transcriber, OPTIONS)
    other = OnlineTranscriber(transcriber, OPTIONS)
    online.insert_audio_chunk(audio[: 3 * SAMPLE_RATE])
    other.insert_audio_chunk(audio[: 3 * SAMPLE_RATE])
    release = threading.Event()
    real = updates_module.decode_updates
    import flexispeech.streaming.scheduler as scheduler_module

    def held(transcriber, streams, finals=None):
        if other in streams:
            release.wait(10)
        return real(transcriber, streams, finals)

    monkeypatch.setattr(scheduler_module, "decode_updates", held)
    with Scheduler(transcriber, gather_s=0.0, max_wait_s=0.0) as scheduler:
        scheduler.submit(online).result(10)
        busy = scheduler.submit(other)  # the worker holds this batch until released
        final = scheduler.submit(online, final=True)
        assert final.done() and final.result().final and final.result().compute_s == 0.0
        release.set()
        busy.result(10)
    assert (scheduler.rows, scheduler.undecoded) == (2, 1)


def test_the_previous_decoding_is_the_next_ones_draft_and_changes_no_update(
    transcriber, audio, monkeypatch
) -> None:
    """Each update's draft is the previous decoding while the buffer start and prompt stay
    (none after a cut); a stream decoded with drafts gets, update for update, what it gets
    without them (routed ranks, a buffer cut at 3 s)."""
    import dataclasses

    options = StreamOptions(trim_s=3.0, max_buffer_s=4.0)

    def run() -> tuple[list, list[int]]:
        online = OnlineTranscriber(transcriber, options)
        updates, drafts = [], []
        real = OnlineTranscriber.request

        def request(self):
            req = real(self)
            drafts.append(len(req.draft))
            return req

        with monkeypatch.context() as m:
            m.setattr(OnlineTranscriber, "request", request)
            for start in range(0, audio.size, SAMPLE_RATE):
                online.insert_audio_chunk(audio[start : start + SAMPLE_RATE])
                u = online.process_iter()
                updates.append((u.committed, u.tentative, u.rank, u.buffer_start_s))
            u = online.finish()
        updates.append((u.committed, u.tentative, u.rank, u.buffer_start_s))
        return updates, drafts

    with_drafts, lengths = run()
    real_request = OnlineTranscriber.request
    monkeypatch.setattr(
        OnlineTranscriber, "request", lambda self: dataclasses.replace(real_request(self), draft=())
    )
    without, _ = run()
    assert with_drafts == without
    assert lengths[0] == 0 and any(lengths)  # the first update has none; later ones had drafts
    starts = [u[3] for u in with_drafts[:-1]]
    after_cut = [i for i in range(1, len(starts)) if starts[i] != starts[i - 1]]
    assert after_cut and all(lengths[i] == 0 for i in after_cut)  # a cut buffer gets no draft
