"""The scheduler's isolation: a batch that fails is decoded one by one, and says so."""

from __future__ import annotations

import logging

import pytest

import flexispeech.streaming.scheduler as scheduler_module
from flexispeech.streaming.scheduler import Scheduler


class _Stream:
    """A stream whose every update needs decoding (the scheduler queues it)."""

    def wants_decoding(self, final: bool) -> bool:
        return True


def test_a_failed_batch_is_decoded_one_by_one_and_logged(monkeypatch, caplog) -> None:
    """A bad stream in a batch: its caller gets the error, every other stream its update,
    and the fallback is logged (a batched path failing on every batch would otherwise
    show only as a server N times slower)."""
    bad = _Stream()

    def fake_decode(transcriber, streams, finals):
        if bad in streams:
            raise ValueError("non-finite samples")
        return [f"update of {id(s)}" for s in streams]

    monkeypatch.setattr(scheduler_module, "decode_updates", fake_decode)
    streams = [_Stream(), bad, _Stream()]
    with caplog.at_level(logging.WARNING, logger="flexispeech.streaming.scheduler"):
        scheduler = Scheduler(transcriber=None, gather_s=0.0)
        with scheduler._cond:  # queue all three before the worker wakes: one batch
            futures = [scheduler.submit(s) for s in streams]
        scheduler.close()
    assert futures[0].result() == f"update of {id(streams[0])}"
    assert futures[2].result() == f"update of {id(streams[2])}"
    with pytest.raises(ValueError, match="non-finite"):
        futures[1].result()
    assert scheduler.fallbacks == 1 and scheduler.batches == 1
    assert "batched decoding of 3 updates failed (non-finite samples)" in caplog.text


def test_busy_s_and_queued_tell_a_stuck_decode_from_a_slow_one(monkeypatch) -> None:
    """While a batch decodes, ``busy_s`` grows and later updates count as ``queued``; once
    it is done both are back at 0 (what a load test reads when a round does not finish)."""
    import threading

    release, started = threading.Event(), threading.Event()

    def slow_decode(transcriber, streams, finals):
        started.set()
        release.wait(10)
        return ["update"] * len(streams)

    monkeypatch.setattr(scheduler_module, "decode_updates", slow_decode)
    scheduler = Scheduler(transcriber=None, gather_s=0.0)
    assert scheduler.busy_s == 0.0 and scheduler.queued == 0
    first = scheduler.submit(_Stream())
    assert started.wait(5)
    waiting = scheduler.submit(_Stream())
    busy = scheduler.busy_s
    threading.Event().wait(0.05)
    assert scheduler.busy_s > busy > 0.0 and scheduler.queued == 1
    release.set()
    assert first.result(5) == "update" and waiting.result(5) == "update"
    scheduler.close()
    assert scheduler.busy_s == 0.0 and scheduler.queued == 0


def _recording_decode(monkeypatch, seconds: float) -> list[list[object]]:
    """decode_updates replaced by one that takes ``seconds`` and records each batch's streams."""
    import time

    batches: list[list[object]] = []

    def fake_decode(transcriber, streams, finals):
        batches.append(list(streams))
        time.sleep(seconds)
        return ["update"] * len(streams)

    monkeypatch.setattr(scheduler_module, "decode_updates", fake_decode)
    return batches


def _together_then_50_ms_apart(scheduler: Scheduler, a: _Stream, b: _Stream) -> None:
    """Both streams submit at once (served once, together: both live), then again 50 ms
    apart; every update is answered, and the scheduler is closed."""
    import threading

    with scheduler._cond:
        first = [scheduler.submit(a), scheduler.submit(b)]
    for f in first:
        f.result(5)
    later = scheduler.submit(a)
    threading.Event().wait(0.05)
    late = scheduler.submit(b)
    assert later.result(5) == late.result(5) == "update"
    scheduler.close()


@pytest.mark.parametrize("max_wait_s", [0.5, 0.0])
def test_a_batch_waits_for_the_live_streams_not_yet_queued(monkeypatch, max_wait_s) -> None:
    """Two live streams submitting 50 ms apart go out in one batch when the last decode
    took 200 ms (the wait: half of it); with the wait off, in two."""
    batches = _recording_decode(monkeypatch, 0.2)
    a, b = _Stream(), _Stream()
    scheduler = Scheduler(transcriber=None, gather_s=0.0, max_wait_s=max_wait_s)
    _together_then_50_ms_apart(scheduler, a, b)
    assert batches[0] == [a, b]
    assert batches[1:] == ([[a, b]] if max_wait_s else [[a], [b]])


def test_a_finished_stream_is_not_waited_for(monkeypatch) -> None:
    """After its final update a stream is no longer live: the next batch of the other
    stream leaves at once, though the last decode was slow."""
    import time

    batches = _recording_decode(monkeypatch, 0.3)
    a, b = _Stream(), _Stream()
    scheduler = Scheduler(transcriber=None, gather_s=0.0)
    with scheduler._cond:
        first = [scheduler.submit(a), scheduler.submit(b, final=True)]
    for f in first:
        f.result(5)
    start = time.monotonic()
    scheduler.submit(a).result(5)
    waited = time.monotonic() - start - 0.3  # minus the decode itself
    scheduler.close()
    assert batches == [[a, b], [a]] and waited < 0.1


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_on_a_cpu_a_batch_leaves_without_waiting_for_the_live_streams(monkeypatch, device: str) -> None:
    """A model on the CPU turns the wait for live streams off by default (a CPU batch shares
    little, docs/streaming.md): two live streams submitting 50 ms apart after a 200-ms
    decode go out in two batches; a model elsewhere (here on the meta device) waits."""
    from types import SimpleNamespace

    import torch

    batches = _recording_decode(monkeypatch, 0.2)
    a, b = _Stream(), _Stream()
    model = torch.nn.Linear(1, 1, device=device)
    scheduler = Scheduler(transcriber=SimpleNamespace(model=model))
    _together_then_50_ms_apart(scheduler, a, b)
    assert batches[1:] == ([[a], [b]] if device == "cpu" else [[a, b]])
