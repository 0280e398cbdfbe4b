"""A small Python client of ``flexispeech serve`` (protocol version 1, docs/streaming.md).

    result = asyncio.run(stream_samples("ws://127.0.0.1:8000/ws", samples, chunk_s=0.5))

``stream_file`` uploads a file's bytes and collects the events; ``stream_samples`` plays
16 kHz samples as a microphone would (in real time by default) and records, for every
update, when it arrived: what the load test measures lag with.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from flexispeech.audio import SAMPLE_RATE
from flexispeech.streaming.server.protocol import VERSION

TIMEOUT_S = 600.0  # no stream of the tests or the load test runs longer: a hung server fails


@dataclass
class StreamResult:
    """The events of one stream and, per event, the seconds since the first audio was sent."""

    events: list[dict[str, Any]] = field(default_factory=list)
    arrived_s: list[float] = field(default_factory=list)

    @property
    def error(self) -> dict[str, Any] | None:
        """The error event, if the stream ended with one."""
        return next((e for e in self.events if e.get("type") == "error"), None)

    @property
    def text(self) -> str:
        """The committed text at the end of the stream."""
        updates = [e for e in self.events if e.get("type") == "update"]
        return updates[-1]["committed_text"] if updates else ""


def start_message(source: str, chunk_s: float = 1.0, realtime: bool = True, **extra: Any) -> str:
    """The opening message of a stream."""
    return json.dumps(
        {
            "type": "start",
            "version": VERSION,
            "source": source,
            "chunk": chunk_s,
            "realtime": realtime,
            **extra,
        }
    )


async def _collect(ws: Any, result: StreamResult, t0: float) -> None:
    """Read events until the final update, an error, or the connection's end."""
    async for msg in ws:
        if msg.type.name != "TEXT":
            break
        event = json.loads(msg.data)
        result.events.append(event)
        result.arrived_s.append(time.perf_counter() - t0)
        if event.get("type") == "error" or event.get("final"):
            break


async def stream_file(url: str, data: bytes, chunk_s: float = 1.0, realtime: bool = False) -> StreamResult:
    """Upload an audio file's ``data`` and collect its events (the server paces it when
    ``realtime``)."""
    import aiohttp

    result = StreamResult()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT_S)) as http:
        async with http.ws_connect(url, max_msg_size=0) as ws:
            await ws.send_str(start_message("file", chunk_s, realtime, size=len(data)))
            t0 = time.perf_counter()
            await ws.send_bytes(data)
            await _collect(ws, result, t0)
    return result


async def stream_samples(
    url: str, samples: np.ndarray, chunk_s: float = 1.0, block_s: float = 0.256, realtime: bool = True
) -> StreamResult:
    """Play ``samples`` [T] (16 kHz mono) as a microphone: blocks of ``block_s`` seconds
    (4096 samples, as the page sends them), at their own pace when ``realtime``, then
    ``stop``; collect the events as they arrive."""
    import aiohttp

    result = StreamResult()
    block = max(1, int(block_s * SAMPLE_RATE))
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT_S)) as http:
        async with http.ws_connect(url, max_msg_size=0) as ws:
            await ws.send_str(start_message("mic", chunk_s))
            t0 = time.perf_counter()
            reading = asyncio.ensure_future(_collect(ws, result, t0))
            for start in range(0, samples.size, block):
                if realtime:  # the block is sent once its last sample would have been recorded
                    due = min(start + block, samples.size) / SAMPLE_RATE
                    await asyncio.sleep(max(0.0, due - (time.perf_counter() - t0)))
                if reading.done():  # the server ended the stream (an error event)
                    break
                await ws.send_bytes(np.asarray(samples[start : start + block], dtype="<f4").tobytes())
            if not reading.done():
                await ws.send_str(json.dumps({"type": "stop"}))
            await reading
    return result
