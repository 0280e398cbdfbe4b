"""One stream's bad input or behaviour ends that stream with a clear error event and never
affects the others: every case runs beside a good stream, whose transcript must be the
one it gets alone, and the server must log no error."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import socket
import struct
import tempfile
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("aiohttp")
import aiohttp  # noqa: E402
from aiohttp.test_utils import TestServer  # noqa: E402

from flexispeech.audio import load_audio  # noqa: E402
from flexispeech.streaming.client import start_message, stream_file  # noqa: E402
from flexispeech.streaming.file_feed import stream_file_chunks  # noqa: E402
from flexispeech.streaming.online import OnlineTranscriber, StreamOptions  # noqa: E402
from flexispeech.streaming.server.app import STATE_KEY, create_app  # noqa: E402
from flexispeech.streaming.server.protocol import Limits  # noqa: E402
from flexispeech.streaming.transcriber import Transcriber  # noqa: E402

OPTIONS = StreamOptions(audio_ctx=250)
LIMITS = Limits(
    max_streams=4,
    idle_timeout_s=1.0,
    max_upload_bytes=200_000,
    max_mic_message_bytes=64_000,
    max_pending_s=2.0,
    send_timeout_s=1.0,
    send_buffer_bytes=4096,
)
GOOD = "fox.wav"


@pytest.fixture(scope="module")
def transcriber() -> Transcriber:
    return Transcriber("random:tiny")


@pytest.fixture(scope="module")
def good_alone(transcriber, assets_dir: Path) -> str:
    online = OnlineTranscriber(transcriber, OPTIONS)
    list(stream_file_chunks(online, load_audio(assets_dir / GOOD), 0.5))
    return online.committed_text


async def events_of(ws) -> list[dict]:
    """Events until an error or the final update; then whether the server closed."""
    out = []
    async for msg in ws:
        if msg.type != aiohttp.WSMsgType.TEXT:
            break
        out.append(json.loads(msg.data))
        if out[-1]["type"] == "error" or out[-1].get("final"):
            break
    return out


async def opened(http, url, first: str | bytes):
    ws = await http.ws_connect(url)
    await (ws.send_str(first) if isinstance(first, str) else ws.send_bytes(first))
    return ws


def mic_start() -> str:
    return start_message("mic", 1.0)


async def invalid_json(http, url, assets):
    return await events_of(await opened(http, url, "{not json"))


async def binary_first(http, url, assets):
    return await events_of(await opened(http, url, b"\x00" * 64))


async def other_version(http, url, assets):
    return await events_of(
        await opened(http, url, json.dumps({"type": "start", "version": 2, "source": "mic"}))
    )


async def undecodable_upload(http, url, assets):
    ws = await opened(http, url, start_message("file", 1.0))
    await ws.send_bytes(b"this is not audio" * 10)
    return await events_of(ws)


async def empty_upload(http, url, assets):
    ws = await opened(http, url, start_message("file", 1.0))
    await ws.send_bytes(b"")
    return await events_of(ws)


async def declared_too_large(http, url, assets):
    return await events_of(
        await opened(http, url, start_message("file", 1.0, size=LIMITS.max_upload_bytes + 1))
    )


async def mic_odd_bytes(http, url, assets):
    ws = await opened(http, url, mic_start())
    await ws.send_bytes(b"\x00" * 7)
    return await events_of(ws)


async def mic_nan(http, url, assets):
    ws = await opened(http, url, mic_start())
    samples = np.zeros(1600, dtype="<f4")
    samples[100] = np.nan
    await ws.send_bytes(samples.tobytes())
    return await events_of(ws)


async def mic_message_too_large(http, url, assets):
    ws = await opened(http, url, mic_start())
    await ws.send_bytes(np.zeros(LIMITS.max_mic_message_bytes // 4 + 1, dtype="<f4").tobytes())
    return await events_of(ws)


async def mic_faster_than_real_time(http, url, assets):
    ws = await opened(http, url, mic_start())
    for _ in range(10):  # 7.5 s at once, in messages under the size limit: more than one update can take
        await ws.send_bytes(np.zeros(12000, dtype="<f4").tobytes())
    return await events_of(ws)


async def idle(http, url, assets):
    return await events_of(await opened(http, url, mic_start()))  # then sends nothing


async def unknown_message(http, url, assets):
    ws = await opened(http, url, mic_start())
    await ws.send_str(json.dumps({"type": "pause"}))
    return await events_of(ws)


CASES = {
    invalid_json: ("bad_request", "not valid JSON"),
    binary_first: ("bad_request", "opening JSON message"),
    other_version: ("version", "version 2"),
    undecodable_upload: ("bad_audio", "the uploaded file: cannot decode"),
    empty_upload: ("bad_audio", "the uploaded file is empty"),
    declared_too_large: ("too_large", "at most 200000"),
    mic_odd_bytes: ("bad_audio", "not whole float32 samples"),
    mic_nan: ("bad_audio", "NaN or infinite"),
    mic_message_too_large: ("too_large", "microphone message"),
    mic_faster_than_real_time: ("overflow", "waiting to be decoded"),
    idle: ("idle", "no message for 1 s"),
    unknown_message: ("bad_request", "'pause'"),
}


def run_beside_a_good_stream(transcriber, assets_dir, bad, limits=LIMITS):
    """(the bad client's result, the good stream's result, the streams still open on the
    server once both clients are done and the server had 5 s to notice) of one run."""

    async def main():
        app = create_app(transcriber, OPTIONS, limits)
        async with TestServer(app) as server, aiohttp.ClientSession() as http:
            url = str(server.make_url("/ws"))
            good = stream_file(url, (assets_dir / GOOD).read_bytes(), chunk_s=0.5)
            got, good = await asyncio.gather(bad(http, url, assets_dir), good)
            for _ in range(100):  # the server's side of the bad stream ends soon after
                if not app[STATE_KEY].active:
                    break
                await asyncio.sleep(0.05)
            return got, good, set(app[STATE_KEY].active)  # before the server's shutdown ends them

    return asyncio.run(main())


@pytest.mark.parametrize("bad", list(CASES), ids=[f.__name__ for f in CASES])
def test_bad_input_ends_only_its_own_stream(bad, transcriber, assets_dir, good_alone, caplog) -> None:
    code, words = CASES[bad]
    with caplog.at_level(logging.WARNING):
        got, good, still_open = run_beside_a_good_stream(transcriber, assets_dir, bad)
    errors = [e for e in got if e["type"] == "error"]
    assert len(errors) == 1 and errors[0]["code"] == code and words in errors[0]["message"], got
    assert tempfile.gettempdir() not in errors[0]["message"] and os.sep + "upload" not in errors[0]["message"]
    assert good.error is None and good.text == good_alone
    assert not still_open
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


def test_an_undeclared_oversized_message_closes_with_1009(
    transcriber, assets_dir, good_alone, caplog
) -> None:
    async def oversized(http, url, assets):
        ws = await opened(http, url, start_message("file", 1.0))
        await ws.send_bytes(b"\x00" * (LIMITS.max_upload_bytes + 1))
        await events_of(ws)
        return ws.close_code

    with caplog.at_level(logging.WARNING):
        code, good, still_open = run_beside_a_good_stream(transcriber, assets_dir, oversized)
    assert code == aiohttp.WSCloseCode.MESSAGE_TOO_BIG
    assert good.text == good_alone and not still_open
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


def test_a_stream_beyond_max_streams_is_told_the_server_is_busy(transcriber, assets_dir, good_alone) -> None:
    limits = Limits(max_streams=1, idle_timeout_s=5.0)

    async def second(http, url, assets):
        for _ in range(200):  # until the good stream holds the one place (a fixed sleep raced it)
            async with http.get(url.replace("/ws", "/stats")) as resp:
                if (await resp.json())["active"] == 1:
                    break
            await asyncio.sleep(0.01)
        ws = await http.ws_connect(url)
        return await events_of(ws), (await ws.receive()).type

    (got, after), good, _ = run_beside_a_good_stream(transcriber, assets_dir, second, limits)
    assert [e["code"] for e in got] == ["busy"] and "limit of 1 streams" in got[0]["message"]
    assert after in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)  # and then closed
    assert good.text == good_alone


def test_a_client_that_disconnects_mid_update_leaves_the_others_alone(
    transcriber, assets_dir, good_alone
) -> None:
    audio = load_audio(assets_dir / "stella.wav")

    async def leaves(http, url, assets):
        ws = await opened(http, url, mic_start())
        await ws.send_bytes(audio[: 2 * 16000].astype("<f4").tobytes())  # an update starts decoding
        await asyncio.sleep(0.01)
        await ws.close()
        return []

    _, good, still_open = run_beside_a_good_stream(transcriber, assets_dir, leaves)
    assert good.text == good_alone and not still_open


def _raw_websocket(port: int) -> socket.socket:
    """A websocket client on a bare socket with a tiny receive buffer, that will never read."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)  # before connect: a small window
    sock.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    reply = b""
    while b"\r\n\r\n" not in reply:
        reply += sock.recv(1024)
    assert reply.startswith(b"HTTP/1.1 101")
    return sock


def _frame(opcode: int, payload: bytes) -> bytes:
    """A masked client frame (RFC 6455: clients mask; a zero mask leaves the bytes as they are)."""
    n = len(payload)
    head = bytes([0x80 | opcode])
    head += (
        bytes([0x80 | n])
        if n < 126
        else bytes([0x80 | 126]) + struct.pack(">H", n)
        if n < 65536
        else (bytes([0x80 | 127]) + struct.pack(">Q", n))
    )
    return head + b"\x00\x00\x00\x00" + payload


def test_a_client_that_stops_reading_is_dropped_and_the_others_keep_going(
    transcriber, assets_dir, good_alone
) -> None:
    joined = np.concatenate(
        [load_audio(assets_dir / n) for n in ("fox.wav", "stella.wav", "meeting.wav")] * 2
    )

    async def never_reads(http, url, assets):
        import io

        import soundfile

        wav = io.BytesIO()
        soundfile.write(wav, joined, 16000, format="WAV", subtype="FLOAT")
        port = int(url.split(":")[2].split("/")[0])
        sock = await asyncio.to_thread(_raw_websocket, port)
        # 180 updates (0.1-s chunks of 18 s, as fast as they decode) that it never takes
        sock.sendall(_frame(0x1, start_message("file", 0.1, realtime=False).encode()))
        sock.sendall(_frame(0x2, wav.getvalue()))
        return sock

    limits = Limits(send_timeout_s=0.5, send_buffer_bytes=4096, max_pending_s=60.0)
    sock, good, still_open = run_beside_a_good_stream(transcriber, assets_dir, never_reads, limits)
    # the server gave up on it: the stream is no longer open (connection dropped or closed)
    assert not still_open
    assert good.text == good_alone
    sock.close()
