"""The multi-stream scheduler: the pending updates of all streams, decoded as one batch.

Streams (one ``OnlineTranscriber`` each) ``submit`` an update when they have a chunk of new
audio; one worker thread owns the model and decodes whatever is queued as one batch
(``flexispeech.streaming.updates.decode_updates``: one encoder pass per window size and
one batched greedy decoding, every stream at its own routed rank). While a batch decodes,
the next updates queue up, so under load the batch grows instead of the queue: N streams
cost about one batched decoding per chunk instead of N decodings in a row.

Nothing else touches the model, and the worker never waits for audio: pacing, network I/O
and audio decoding happen in the callers. A stream must not be changed (audio inserted)
while its update is queued or decoding; callers hold new audio back until the future of
the update is done.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass

from flexispeech.errors import FlexispeechError
from flexispeech.streaming.online import OnlineTranscriber, Update
from flexispeech.streaming.transcriber import Transcriber
from flexispeech.streaming.updates import decode_updates

log = logging.getLogger(__name__)

GATHER_S = 0.01  # after a wake-up, wait at least this long for the other live streams
# Live streams (not finished, served in the last LIVE_S seconds) submit every chunk, at
# times of their own: a batch that leaves with the first of them makes the others wait a
# whole decode, and a batch of N costs far less than N batches of one (every decoding step
# is shared by the batch's rows). So the worker waits for the live streams
# that have not submitted yet, up to WAIT_SHARE of the last batch's decoding time (never
# more than MAX_WAIT_S): where decoding is fast (a GPU) it hardly waits at all. On a CPU
# a batch shares too little for the wait to pay, and it is off (``default_max_wait_s``).
LIVE_S = 5.0
WAIT_SHARE = 0.5
MAX_WAIT_S = 0.5


def default_max_wait_s(transcriber: Transcriber | None) -> float:
    """How long a batch waits at most for the live streams not yet queued: not at all on a
    CPU, ``MAX_WAIT_S`` elsewhere (and for no model: a test's stand-in).

    On a CPU a batch shares little: every row's encoder pass and most of its decoder work
    are its own, and since drafts and prompt lookup an update takes a few decoding steps,
    so a batch of four costs nearly four batches of one, while the wait delays the stream
    that submitted first. Measured (docs/streaming.md, 2026-12-03): 4 streams' p90 lag
    0.43-0.46 s without the wait against 1.02-1.06 s with it; GPU rows, where a step's cost
    is mostly its fixed part, were measured with the wait."""
    model = getattr(transcriber, "model", None)
    if model is None:
        return MAX_WAIT_S
    return 0.0 if next(model.parameters()).device.type == "cpu" else MAX_WAIT_S


@dataclass
class _Job:
    stream: OnlineTranscriber
    final: bool
    future: Future


class Scheduler:
    """Batches the updates of many streams on one model (see the module docstring).

    Args:
        transcriber: the loaded Whisper ``Transcriber`` all streams share.
        max_batch: at most this many updates per batch (the rest wait for the next).
        gather_s: how long a wake-up waits at least for the live streams not yet queued.
        max_wait_s: how long it waits at most (``WAIT_SHARE`` of the last batch's decoding
            time below that); 0 turns the wait for live streams off (``gather_s`` too);
            None: ``default_max_wait_s`` (off on a CPU).

    Use as a context manager, or call ``close`` to stop the worker.
    """

    def __init__(
        self,
        transcriber: Transcriber,
        max_batch: int = 64,
        gather_s: float = GATHER_S,
        max_wait_s: float | None = None,
    ) -> None:
        if max_batch < 1:
            raise FlexispeechError(f"max_batch must be >= 1, got {max_batch}")
        self.transcriber, self.max_batch, self.gather_s = transcriber, max_batch, gather_s
        self.max_wait_s = default_max_wait_s(transcriber) if max_wait_s is None else max_wait_s
        self._queue: list[_Job] = []
        self._cond = threading.Condition()
        self._closed = False
        self._live: dict[int, float] = {}  # id of each live stream -> when its last update was done
        self._last_decode_s = 0.0
        self.batches = 0  # batches decoded so far
        self.rows = 0  # updates decoded so far (rows / batches = mean batch size)
        self.fallbacks = 0  # batches whose batched decoding failed and that were decoded one by one
        self.undecoded = 0  # updates made at submit, without decoding (``submit``)
        self._batch_started: float | None = None  # monotonic time the batch now decoding began
        self._worker = threading.Thread(target=self._run, name="flexispeech-scheduler", daemon=True)
        self._worker.start()

    def __enter__(self) -> Scheduler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def submit(self, stream: OnlineTranscriber, final: bool = False) -> Future:
        """Queue one update of ``stream`` (``final``: its last, as ``finish``); the future's
        result is the ``Update``, or the error that decoding this stream raised.

        An update that needs no decoding (too little audio yet, or the final update of a
        buffer its previous update decoded: ``OnlineTranscriber.wants_decoding``) is made
        here, at once: it would otherwise wait for the batch decoding at the time, a whole
        decoding at the end of every stream while the others are served."""
        future: Future = Future()
        with self._cond:
            if self._closed:
                raise FlexispeechError("the scheduler is closed")
            if any(job.stream is stream for job in self._queue):
                raise FlexispeechError("a stream may have one update queued at a time")
            if stream.wants_decoding(final):
                self._queue.append(_Job(stream, final, future))
                self._cond.notify()
                return future
        future.set_running_or_notify_cancel()
        self.undecoded += 1
        try:
            # Without the model: ``apply`` only (no tokenizer, no decoding), on the caller's
            # thread, which owns the stream while no update of it is queued.
            future.set_result(decode_updates(self.transcriber, [stream], [final])[0])
        except Exception as err:  # noqa: BLE001 - handed to the stream's caller
            future.set_exception(err)
        self._mark_live([_Job(stream, final, future)], time.monotonic())
        return future

    def decode(self, stream: OnlineTranscriber, final: bool = False) -> Update:
        """``submit`` and wait for the update (for ``stream_file_chunks``'s ``decode``)."""
        return self.submit(stream, final).result()

    def close(self) -> None:
        """Finish the queued updates, then stop the worker."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._worker.join()

    def _take(self) -> list[_Job] | None:
        """The next batch (None once closed and drained)."""
        with self._cond:
            while not self._queue and not self._closed:
                self._cond.wait()
            if not self._queue:
                return None
            if self.max_wait_s <= 0:  # the wait is off: what is queued leaves now
                jobs, self._queue = self._queue[: self.max_batch], self._queue[self.max_batch :]
                return jobs
            # Wait for the live streams that have not submitted yet (see LIVE_S), so a batch
            # does not leave with only the first of them.
            now = time.monotonic()
            wait = max(self.gather_s, min(self.max_wait_s, WAIT_SHARE * self._last_decode_s))
            deadline = now + wait
            live = {sid for sid, done in self._live.items() if now - done < LIVE_S}
            while not self._closed and len(self._queue) < self.max_batch:
                if live <= {id(job.stream) for job in self._queue}:
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            jobs, self._queue = self._queue[: self.max_batch], self._queue[self.max_batch :]
            return jobs

    def _served(self, jobs: list[_Job], started: float) -> None:
        """Record a decoded batch: how long it took, and which streams are still live."""
        now = time.monotonic()
        with self._cond:
            self._last_decode_s = now - started
        self._mark_live(jobs, now)

    def _mark_live(self, jobs: list[_Job], now: float) -> None:
        """Streams whose update was served at ``now`` are live until their final one."""
        with self._cond:
            for job in jobs:
                if job.final:
                    self._live.pop(id(job.stream), None)
                else:
                    self._live[id(job.stream)] = now
            for sid in [sid for sid, done in self._live.items() if now - done >= LIVE_S]:
                del self._live[sid]  # gone quiet without a final update (a client that left)

    def _run(self) -> None:
        while (jobs := self._take()) is not None:
            jobs = [job for job in jobs if job.future.set_running_or_notify_cancel()]
            if not jobs:
                continue
            self._batch_started = time.monotonic()
            try:
                updates = decode_updates(self.transcriber, [j.stream for j in jobs], [j.final for j in jobs])
            except Exception as err:  # noqa: BLE001 - find the stream at fault: the others must not share its error
                # Said, not swallowed: decoding one by one costs about N batches' time, so a
                # batched path that fails for every batch would show only as a slow server.
                log.warning(
                    "batched decoding of %d updates failed (%s); decoding them one by one", len(jobs), err
                )
                self.fallbacks += 1
                self._one_by_one(jobs)
            else:
                for job, update in zip(jobs, updates):
                    job.future.set_result(update)
            self._served(jobs, self._batch_started)
            self.batches += 1
            self.rows += len(jobs)
            self._batch_started = None

    def _one_by_one(self, jobs: list[_Job]) -> None:
        for job in jobs:
            try:
                job.future.set_result(decode_updates(self.transcriber, [job.stream], [job.final])[0])
            except Exception as err:  # noqa: BLE001 - handed to the stream's caller
                job.future.set_exception(err)

    @property
    def queued(self) -> int:
        """Updates waiting for the next batch."""
        with self._cond:
            return len(self._queue)

    @property
    def busy_s(self) -> float:
        """Seconds the batch now decoding has taken so far (0 when idle): a value that keeps
        growing tells a stuck decode from a slow server whose batches keep finishing."""
        started = self._batch_started
        return time.monotonic() - started if started is not None else 0.0

    @property
    def mean_batch(self) -> float:
        """Mean number of updates per batch so far (0 before the first)."""
        return self.rows / self.batches if self.batches else 0.0
