"""A small local web app for live streaming transcription (aiohttp + one websocket).

``GET /`` serves the page (``static/index.html``); ``GET /ws`` is the websocket that a
page, ``flexispeech.streaming.client`` or any client streams through, one stream per
connection (protocol version 1: ``server/protocol.py``, docs/streaming.md).

All connections share one model through one ``Scheduler``: the pending updates of every
open stream are decoded together as one batch, each stream at its own routed rank, so a
second listener costs a row in a batch instead of a turn in a queue. Sessions never hold
the model while they wait (for the network, a client, or real-time pacing).
"""

from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import itertools
import logging
import signal
import socket
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import WSCloseCode, web

from flexispeech.errors import ConfigError
from flexispeech.streaming.online import StreamOptions
from flexispeech.streaming.scheduler import Scheduler
from flexispeech.streaming.server.protocol import Limits, StreamError
from flexispeech.streaming.server.session import ClientGone, Session
from flexispeech.streaming.transcriber import Transcriber

STATIC = Path(__file__).parent / "static"
# On Ctrl-C, how long open connections may take to end before they are cancelled: a page or
# /stats is answered by then, and a stream, whose websocket is closed first, has stopped.
# aiohttp's default, 60 s, let a stream play on to its end.
SHUTDOWN_S = 1.0
log = logging.getLogger("flexispeech.serve")


@dataclass
class ServerState:
    """What the connections of one app share."""

    transcriber: Transcriber
    options: StreamOptions
    limits: Limits
    scheduler: Scheduler
    pacer: ThreadPoolExecutor  # one thread per open file stream: its real-time pacing waits there
    active: dict[int, web.WebSocketResponse] = field(default_factory=dict)  # the open streams by id
    ids: itertools.count = field(default_factory=itertools.count)


STATE_KEY = web.AppKey("state", ServerState)


def create_app(
    transcriber: Transcriber,
    options: StreamOptions | None = None,
    limits: Limits | None = None,
    max_batch: int | None = None,
) -> web.Application:
    """The web app around a loaded Whisper ``Transcriber``; ``max_batch``: most updates
    per batch (default: ``limits.max_streams``, every open stream)."""
    limits = limits or Limits()
    app = web.Application()
    app[STATE_KEY] = ServerState(
        transcriber,
        options or StreamOptions(),
        limits,
        Scheduler(transcriber, max_batch=max_batch or limits.max_streams),
        ThreadPoolExecutor(limits.max_streams, thread_name_prefix="flexispeech-pacer"),
    )
    app.router.add_get("/", index)
    app.router.add_get("/ws", websocket)
    app.router.add_get("/stats", stats)
    app.router.add_static("/static", STATIC)
    app.on_shutdown.append(_close_streams)
    app.on_cleanup.append(_shutdown)
    return app


async def _close_streams(app: web.Application) -> None:
    """On Ctrl-C: close every open stream's websocket (1001, going away), so its session
    ends at its next event instead of the server waiting for it to play out."""
    closing = [
        ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutting down")
        for ws in list(app[STATE_KEY].active.values())
    ]
    # A close waits for the client's reply: one that does not answer is dropped with the
    # connection once SHUTDOWN_S has passed.
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(asyncio.gather(*closing, return_exceptions=True), SHUTDOWN_S)


async def _shutdown(app: web.Application) -> None:
    state = app[STATE_KEY]
    state.scheduler.close()
    state.pacer.shutdown(wait=False, cancel_futures=True)


async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC / "index.html")


async def stats(request: web.Request) -> web.Response:
    """``{"active", "batches", "rows", "fallbacks", "queued", "busy_s"}``: open streams,
    batches decoded, updates decoded (rows / batches is the mean batch size), batches whose
    batched decoding failed and were decoded one by one, updates waiting for the next batch,
    and how long the batch now decoding has taken (0 when idle)."""
    state = request.app[STATE_KEY]
    sched = state.scheduler
    return web.json_response(
        {
            "active": len(state.active),
            "batches": sched.batches,
            "rows": sched.rows,
            "fallbacks": sched.fallbacks,
            "queued": sched.queued,
            "busy_s": round(sched.busy_s, 3),
        }
    )


async def websocket(request: web.Request) -> web.WebSocketResponse:
    state = request.app[STATE_KEY]
    limits = state.limits
    # The largest message aiohttp takes; a bigger one closes the connection with 1009.
    ws = web.WebSocketResponse(max_msg_size=limits.max_upload_bytes, writer_limit=limits.send_buffer_bytes)
    await ws.prepare(request)
    # Bound what a client that stops reading pins here: aiohttp's, the event loop's and the
    # kernel's send buffers; past them a send waits, and send_timeout_s ends the stream.
    if request.transport is not None:
        request.transport.set_write_buffer_limits(high=limits.send_buffer_bytes)
        sock = request.transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, limits.send_buffer_bytes)
    if len(state.active) >= limits.max_streams:
        with contextlib.suppress(Exception):
            await ws.send_json(
                StreamError(
                    "busy",
                    f"the server is serving its limit of {limits.max_streams} streams; try again later",
                ).event()
            )
        await ws.close()
        return ws
    sid = next(state.ids)
    state.active[sid] = ws
    session = Session(ws, state.transcriber, state.options, state.scheduler, limits, state.pacer)
    try:
        await session.run()
    except StreamError as err:
        with contextlib.suppress(ClientGone):
            await session.send(err.event())
    except ClientGone:
        pass
    except Exception:  # noqa: BLE001 - a bug seen by one stream must not end the server
        log.exception("stream %d failed", sid)
        with contextlib.suppress(ClientGone):
            await session.send(
                StreamError("internal", "internal error while transcribing this stream").event()
            )
    finally:
        state.active.pop(sid, None)
        try:  # a client that stopped reading takes no close frame either: drop the connection
            await asyncio.wait_for(ws.close(), limits.send_timeout_s)
        except Exception:  # noqa: BLE001
            if request.transport is not None:
                request.transport.abort()
    return ws


def listen_error(host: str, port: int, err: OSError) -> ConfigError:
    """The one-line error of a server that cannot listen on ``host:port``: the name does not
    resolve (``socket.gaierror``), the port is in use, or it is not ours to take."""
    return ConfigError(f"cannot listen on {host}:{port}: {err.strerror or err}")


def check_listen(host: str, port: int) -> None:
    """Bind (and let go) every address ``host`` resolves to, as ``serve`` will (with
    SO_REUSEADDR, as aiohttp on POSIX): a port in use or a name that does not resolve fails
    in a moment, before a model is loaded, instead of after; ``listen_error`` if not."""
    try:
        for family, kind, proto, _, address in socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        ):
            with socket.socket(family, kind, proto) as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(address)
    except OSError as err:
        raise listen_error(host, port, err) from None


def serve(
    transcriber: Transcriber,
    host: str = "127.0.0.1",
    port: int = 8000,
    options: StreamOptions | None = None,
    limits: Limits | None = None,
) -> None:
    """Run the app until interrupted. On POSIX, ``kill -USR1 <pid>`` writes every thread's
    stack to stderr (the server keeps running): where a server that stopped answering waits.
    A host or port it cannot listen on is a ``listen_error``."""
    if hasattr(signal, "SIGUSR1"):
        faulthandler.register(signal.SIGUSR1, all_threads=True)
    try:
        web.run_app(
            create_app(transcriber, options, limits),
            host=host,
            port=port,
            print=None,
            shutdown_timeout=SHUTDOWN_S,
        )
    except OSError as err:  # raised only at start-up, by bind or the name's lookup
        raise listen_error(host, port, err) from None
