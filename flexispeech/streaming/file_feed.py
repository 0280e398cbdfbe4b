"""Feed a file's audio to an ``OnlineTranscriber`` chunk by chunk, as a live source would.

``stream_file_chunks`` is what ``flexispeech stream FILE`` and the server's file mode run:
it cuts the samples (or a long file's blocks, read as needed) into chunks, paces them in
real time if asked, and yields one ``Update`` per chunk. The pacing waits in the caller,
never while the model decodes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator

import numpy as np

from flexispeech.audio import SAMPLE_RATE
from flexispeech.errors import ConfigError
from flexispeech.streaming.online import OnlineTranscriber, Update


class BlockFeed:
    """Hands out pieces of a given size from an array [T] or an iterator of blocks [t],
    reading blocks only as they are needed (a long file is never held whole)."""

    def __init__(self, source: np.ndarray | Iterable[np.ndarray]) -> None:
        self.blocks = iter([source]) if isinstance(source, np.ndarray) else iter(source)
        self.pending: list[np.ndarray] = []
        self.size = 0
        self.exhausted = False

    def _fill(self, n: int) -> None:
        while self.size < n and not self.exhausted:
            block = next(self.blocks, None)
            if block is None:
                self.exhausted = True
                return
            block = np.asarray(block, dtype=np.float32).reshape(-1)
            self.pending.append(block)
            self.size += block.size

    def take(self, n: int) -> np.ndarray:
        """Up to ``n`` samples [<=n] (fewer only at the end)."""
        self._fill(n)
        data = np.concatenate(self.pending) if self.pending else np.zeros(0, dtype=np.float32)
        piece, rest = data[:n], data[n:]
        self.pending, self.size = ([rest] if rest.size else []), rest.size
        return piece

    @property
    def done(self) -> bool:
        self._fill(1)
        return self.size == 0


def stream_file_chunks(
    online: OnlineTranscriber,
    samples: np.ndarray | Iterable[np.ndarray],
    chunk_s: float,
    realtime: bool = False,
    decode: Callable[[OnlineTranscriber, bool], Update] | None = None,
    stop: threading.Event | None = None,
) -> Iterator[Update]:
    """Feed ``samples`` [T] (or an iterator of blocks, e.g. ``audio.iter_audio_blocks``)
    to ``online`` in chunks of ``chunk_s`` seconds; one ``Update`` per chunk, then the
    final one.

    ``realtime``: audio arrives at its own pace (a chunk is available only once its last
    sample would have been recorded); when decoding falls behind, all audio that has
    arrived meanwhile goes in at once, as from a live source. The pacing waits here, in the
    caller, never in the decoding.

    ``decode(online, final)``: how an update is decoded, e.g. ``Scheduler.decode`` (batched
    with other streams); default: on this thread (``process_iter`` / ``finish``).

    ``stop``: once set, the feed ends before its next chunk, without a final update (a
    real-time wait ends at once): how another thread interrupts this one.
    """
    if chunk_s <= 0:
        raise ConfigError(f"--chunk must be > 0 seconds, got {chunk_s}")
    step = max(1, int(round(chunk_s * SAMPLE_RATE)))
    feed = BlockFeed(samples)
    if stop is None:
        stop = threading.Event()
    fed, t0 = 0, time.perf_counter()
    while not feed.done:
        want = step
        if realtime:
            due = (fed + step) / SAMPLE_RATE
            wait = due - (time.perf_counter() - t0)
            if wait > 0:
                stop.wait(wait)
            want = max(step, int((time.perf_counter() - t0) * SAMPLE_RATE) - fed)
        if stop.is_set():
            return
        piece = feed.take(want)
        online.insert_audio_chunk(piece)
        fed += piece.size
        if not feed.done:
            yield online.process_iter() if decode is None else decode(online, False)
    yield online.finish() if decode is None else decode(online, True)
