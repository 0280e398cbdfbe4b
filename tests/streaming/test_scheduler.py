"""The scheduler's isolation: a batch that fails is decoded one by one, and says so."""

from __future__ import annotations

import logging

import pytest

import flexispeech.streaming.scheduler as scheduler_module
from flexispeech.streaming.scheduler import Scheduler


def test_a_failed_batch_is_decoded_one_by_one_and_logged(monkeypatch, caplog) -> None:
    """A bad stream in a batch: its caller gets the error, every other stream its update,
    and the fallback is logged (a batched path failing on every batch would otherwise
    show only as a server N times slower)."""
    bad = object()

    def fake_decode(transcriber, streams, finals):
        if bad in streams:
            raise ValueError("non-finite samples")
        return [f"update of {id(s)}" for s in streams]

    monkeypatch.setattr(scheduler_module, "decode_updates", fake_decode)
    streams = [object(), bad, object()]
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
    first = scheduler.submit(object())
    assert started.wait(5)
    waiting = scheduler.submit(object())
    busy = scheduler.busy_s
    threading.Event().wait(0.05)
    assert scheduler.busy_s > busy > 0.0 and scheduler.queued == 1
    release.set()
    assert first.result(5) == "update" and waiting.result(5) == "update"
    scheduler.close()
    assert scheduler.busy_s == 0.0 and scheduler.queued == 0
