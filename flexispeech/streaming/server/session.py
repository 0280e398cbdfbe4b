"""One websocket connection of ``flexispeech serve``: an uploaded file or a microphone stream.

The session owns its ``OnlineTranscriber`` and talks to the shared ``Scheduler`` only
through ``submit``: the model is never held while this session waits for the network,
for its client or for real-time pacing. Anything this client gets wrong ends this session
with an error event (``protocol.StreamError``); nothing here can stop another session.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import tempfile
from concurrent.futures import Executor
from pathlib import Path
from typing import Any

import numpy as np
from aiohttp import WSMsgType, web

from flexispeech.audio import SAMPLE_RATE, check_samples, load_audio
from flexispeech.errors import FlexispeechError
from flexispeech.streaming.file_feed import stream_file_chunks
from flexispeech.streaming.online import OnlineTranscriber, StreamOptions, Update
from flexispeech.streaming.scheduler import Scheduler
from flexispeech.streaming.server.protocol import (
    VERSION,
    Limits,
    Start,
    StreamError,
    mic_samples,
    parse_start,
)
from flexispeech.streaming.transcriber import Transcriber

LEVEL_WINDOW_S = 0.1  # the level meter shows the power of the newest 100 ms
_CLOSED = (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED)


def level_db(samples: np.ndarray) -> float:
    """RMS level (dBFS) of the last ``LEVEL_WINDOW_S`` of ``samples`` [T]; -100 when silent."""
    tail = np.asarray(samples[-int(LEVEL_WINDOW_S * SAMPLE_RATE) :], dtype=np.float64)
    power = float(np.mean(tail**2)) if tail.size else 0.0
    return max(-100.0, 10.0 * np.log10(power + 1e-10))


class ClientGone(Exception):
    """The client closed the connection (or stopped taking events): end quietly."""


def decode_upload(data: bytes) -> np.ndarray:
    """Samples [T] (16 kHz mono float32) of an uploaded file's bytes; ``StreamError``
    naming "the uploaded file" (not the temporary file it was written to) if unusable."""
    if not data:
        raise StreamError("bad_audio", "the uploaded file is empty (0 bytes)")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "upload"
        path.write_bytes(data)
        try:
            return check_samples(load_audio(path), path)
        except FlexispeechError as err:
            problem = getattr(err, "problem", str(err)).replace(str(path), "the uploaded file")
            raise StreamError("bad_audio", f"the uploaded file: {problem}") from None


class Session:
    """One connection; ``run`` serves it to the end (see the module docstring)."""

    def __init__(
        self,
        ws: web.WebSocketResponse,
        transcriber: Transcriber,
        options: StreamOptions,
        scheduler: Scheduler,
        limits: Limits,
        pacer: Executor,
    ) -> None:
        self.ws, self.scheduler, self.limits, self.pacer = ws, scheduler, limits, pacer
        self.online = OnlineTranscriber(transcriber, options)

    async def send(self, payload: dict[str, Any]) -> None:
        """Send one event; a client that does not take it within ``send_timeout_s`` is gone."""
        try:
            await asyncio.wait_for(self.ws.send_str(json.dumps(payload)), self.limits.send_timeout_s)
        except (asyncio.TimeoutError, ConnectionError) as err:
            raise ClientGone(type(err).__name__) from None

    async def send_update(self, update: Update, level: float) -> None:
        await self.send(
            {"type": "update", "level_db": round(level, 1), **update.to_dict(self.online.committed_text)}
        )

    async def receive(self) -> Any:
        """The next message, within the idle timeout; ``ClientGone`` when the client closed."""
        try:
            msg = await asyncio.wait_for(self.ws.receive(), self.limits.idle_timeout_s)
        except asyncio.TimeoutError:
            raise StreamError(
                "idle", f"no message for {self.limits.idle_timeout_s:g} s: stream closed"
            ) from None
        if msg.type in _CLOSED:
            raise ClientGone("closed")
        if msg.type == WSMsgType.ERROR:
            # aiohttp has closed the connection already (e.g. 1009 for a message over the
            # size limit): nothing more can be sent.
            raise ClientGone(str(msg.data))
        return msg

    async def update(self, final: bool = False) -> Update:
        """This stream's next update, decoded in the scheduler's next batch."""
        return await asyncio.wrap_future(self.scheduler.submit(self.online, final))

    async def run(self) -> None:
        msg = await self.receive()
        if msg.type != WSMsgType.TEXT:
            raise StreamError(
                "bad_request", 'expected the opening JSON message ({"type": "start", ...}) before any audio'
            )
        start = parse_start(msg.data, self.limits)
        await self.send(
            {"type": "started", "version": VERSION, "source": start.source, "chunk": start.chunk_s}
        )
        if start.source == "file":
            await self.file(start)
        else:
            await self.mic(start)

    async def file(self, start: Start) -> None:
        msg = await self.receive()
        if msg.type != WSMsgType.BINARY:
            raise StreamError("bad_request", "expected the audio file's bytes as one binary message")
        samples = await asyncio.to_thread(decode_upload, msg.data)
        # The file's chunks come from stream_file_chunks, run on a pacing thread (its
        # real-time waits happen there) with its decoding sent to the shared scheduler.
        updates = stream_file_chunks(
            self.online, samples, start.chunk_s, realtime=start.realtime, decode=self.scheduler.decode
        )
        loop, done = asyncio.get_running_loop(), object()
        try:
            while (update := await loop.run_in_executor(self.pacer, next, updates, done)) is not done:
                seen = int(round(update.audio_s * SAMPLE_RATE))
                await self.send_update(update, level_db(samples[:seen]))
        finally:
            # Ends the generator (and so its pacing) when the client left mid-stream; still
            # running on the pacing thread only when this session itself was cancelled.
            with contextlib.suppress(ValueError):
                await loop.run_in_executor(self.pacer, updates.close)

    async def mic(self, start: Start) -> None:
        """Receive audio while earlier audio decodes: ``reader`` collects, ``decoder`` takes
        all that arrived (at least one chunk) for each update."""
        pending: list[np.ndarray] = []
        arrived = asyncio.Event()
        stopped = False
        chunk_n = int(start.chunk_s * SAMPLE_RATE)
        max_pending = int(self.limits.max_pending_s * SAMPLE_RATE)

        async def reader() -> None:
            nonlocal stopped
            while True:
                msg = await self.receive()
                if msg.type == WSMsgType.BINARY:
                    pending.append(mic_samples(msg.data, self.limits))
                    if sum(p.size for p in pending) > max_pending:
                        raise StreamError(
                            "overflow",
                            f"more than {self.limits.max_pending_s:g} s of audio waiting to "
                            "be decoded: send audio in real time",
                        )
                elif msg.type == WSMsgType.TEXT:
                    try:
                        kind = json.loads(msg.data).get("type")
                    except (ValueError, AttributeError):
                        raise StreamError("bad_request", "a text message that is not a JSON object") from None
                    if kind != "stop":
                        raise StreamError(
                            "bad_request", f"unexpected message type {kind!r} during a microphone stream"
                        )
                    stopped = True
                    arrived.set()
                    return
                arrived.set()

        async def decoder() -> None:
            while True:
                await arrived.wait()
                arrived.clear()
                if sum(p.size for p in pending) >= chunk_n or (stopped and pending):
                    self.online.insert_audio_chunk(np.concatenate(pending))
                    pending.clear()
                    update = await self.update()
                    await self.send_update(update, level_db(self.online.audio))
                    arrived.set()  # audio that came in meanwhile may make the next chunk
                elif stopped:
                    update = await self.update(final=True)
                    await self.send_update(update, -100.0)
                    return

        reading = asyncio.ensure_future(reader())
        decoding = asyncio.ensure_future(decoder())
        try:
            while not decoding.done():
                if reading.done():
                    if reading.exception() is not None:
                        raise reading.exception()  # type: ignore[misc]
                    # The client said stop: only decoding is left. Waiting on both again would
                    # return at once (the reader is done) and spin the event loop, holding the
                    # GIL against the scheduler's decoding thread for as long as it decodes.
                    await decoding
                    break
                await asyncio.wait([reading, decoding], return_when=asyncio.FIRST_COMPLETED)
            decoding.result()
        finally:
            for task in (reading, decoding):
                task.cancel()
            await asyncio.gather(reading, decoding, return_exceptions=True)
