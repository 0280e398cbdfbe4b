"""A small local web app for live streaming transcription (aiohttp + one websocket).

``GET /`` serves the page (``static/index.html``); ``GET /ws`` is the websocket a page (or
any client) streams through. Protocol, one session per connection:

* client -> server, text ``{"type": "file", "chunk": 1.0, "realtime": true}`` then one
  binary message with the bytes of an audio file (any format soundfile reads): the server
  decodes it and streams it as ``flexispeech stream FILE`` would;
* client -> server, text ``{"type": "mic", "chunk": 1.0}`` then binary messages of 16 kHz
  mono float32 little-endian samples, and text ``{"type": "stop"}`` at the end;
* server -> client: one JSON event per update (``Update.to_dict`` plus ``type: "update"``
  and ``level_db``, the level of the newest audio), ``{"type": "error", "message"}`` on
  bad input.

The model is shared by all connections; decoding runs in a worker thread under a lock, so
the event loop keeps serving while one update decodes.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import threading
from pathlib import Path
from typing import Any

import numpy as np
from aiohttp import WSMsgType, web

from flexispeech.audio import SAMPLE_RATE, check_samples, load_audio
from flexispeech.errors import FlexispeechError
from flexispeech.streaming.online import OnlineTranscriber, StreamOptions, Update, stream_file_chunks
from flexispeech.streaming.transcriber import Transcriber

STATIC = Path(__file__).parent / "static"
LEVEL_WINDOW_S = 0.1  # the level meter shows the power of the newest 100 ms
MAX_UPLOAD_BYTES = 64 * 1024 * 1024
TRANSCRIBER_KEY = web.AppKey("transcriber", Transcriber)
OPTIONS_KEY = web.AppKey("options", StreamOptions)
LOCK_KEY = web.AppKey("lock", threading.Lock)


def level_db(samples: np.ndarray) -> float:
    """RMS level (dBFS) of the last ``LEVEL_WINDOW_S`` of ``samples`` [T]; -100 when silent."""
    tail = np.asarray(samples[-int(LEVEL_WINDOW_S * SAMPLE_RATE) :], dtype=np.float64)
    power = float(np.mean(tail**2)) if tail.size else 0.0
    return max(-100.0, 10.0 * np.log10(power + 1e-10))


def event(online: OnlineTranscriber, update: Update, level: float) -> str:
    """The JSON text of one update event."""
    return json.dumps({"type": "update", "level_db": round(level, 1), **update.to_dict(online.committed_text)})


def create_app(transcriber: Transcriber, options: StreamOptions | None = None) -> web.Application:
    """The web app around a loaded Whisper ``Transcriber``."""
    app = web.Application(client_max_size=MAX_UPLOAD_BYTES)
    app[TRANSCRIBER_KEY] = transcriber
    app[OPTIONS_KEY] = options or StreamOptions()
    app[LOCK_KEY] = threading.Lock()
    app.router.add_get("/", index)
    app.router.add_get("/ws", websocket)
    app.router.add_static("/static", STATIC)
    return app


async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC / "index.html")


async def websocket(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(max_msg_size=MAX_UPLOAD_BYTES)
    await ws.prepare(request)
    app = request.app
    online = OnlineTranscriber(app[TRANSCRIBER_KEY], app[OPTIONS_KEY])
    session = _Session(ws, online, app[LOCK_KEY])
    try:
        await session.serve()
    except FlexispeechError as err:
        await ws.send_json({"type": "error", "message": str(err)})
    finally:
        await ws.close()
    return ws


class _Session:
    """One websocket connection: a file upload or a microphone stream."""

    def __init__(self, ws: web.WebSocketResponse, online: OnlineTranscriber, lock: threading.Lock) -> None:
        self.ws, self.online, self.lock = ws, online, lock

    async def call(self, fn: Any, *args: Any) -> Any:
        """Run blocking model work in a thread, one decoding at a time across sessions."""

        def locked() -> Any:
            with self.lock:
                return fn(*args)

        return await asyncio.get_running_loop().run_in_executor(None, locked)

    async def serve(self) -> None:
        async for msg in self.ws:
            if msg.type != WSMsgType.TEXT:
                raise FlexispeechError("expected a JSON message saying 'file' or 'mic' first")
            request = json.loads(msg.data)
            chunk = float(request.get("chunk", 1.0))
            if not 0.1 <= chunk <= 10.0:
                raise FlexispeechError(f"chunk must be in [0.1, 10] seconds, got {chunk}")
            if request.get("type") == "file":
                await self.file(chunk, bool(request.get("realtime", True)))
            elif request.get("type") == "mic":
                await self.mic(chunk)
            else:
                raise FlexispeechError(f"unknown request type {request.get('type')!r}: expected 'file' or 'mic'")
            return

    async def file(self, chunk: float, realtime: bool) -> None:
        msg = await self.ws.receive()
        if msg.type != WSMsgType.BINARY:
            raise FlexispeechError("expected the audio file's bytes as one binary message")
        with tempfile.NamedTemporaryFile(suffix=".audio") as tmp:
            tmp.write(msg.data)
            tmp.flush()
            samples = check_samples(await asyncio.to_thread(load_audio, tmp.name), "uploaded file")
        updates = stream_file_chunks(self.online, samples, chunk, realtime=realtime)
        done = object()
        while (update := await self.call(next, updates, done)) is not done:
            seen = int(round(update.audio_s * SAMPLE_RATE))
            await self.ws.send_str(event(self.online, update, level_db(samples[:seen])))

    async def mic(self, chunk: float) -> None:
        pending = 0
        async for msg in self.ws:
            if msg.type == WSMsgType.BINARY:
                samples = np.frombuffer(msg.data, dtype="<f4").astype(np.float32)
                self.online.insert_audio_chunk(samples)
                pending += samples.size
                if pending >= chunk * SAMPLE_RATE:
                    pending = 0
                    update = await self.call(self.online.process_iter)
                    await self.ws.send_str(event(self.online, update, level_db(self.online.audio)))
            elif msg.type == WSMsgType.TEXT and json.loads(msg.data).get("type") == "stop":
                break
        update = await self.call(self.online.finish)
        await self.ws.send_str(event(self.online, update, -100.0))


def serve(transcriber: Transcriber, host: str = "127.0.0.1", port: int = 8000, options: StreamOptions | None = None) -> None:
    """Run the app until interrupted."""
    web.run_app(create_app(transcriber, options), host=host, port=port, print=None)
