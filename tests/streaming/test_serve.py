"""The web app in-process (aiohttp's test client): page, websocket protocol, file streaming
and a microphone-style stream on a tiny random Whisper."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("aiohttp")
from aiohttp.test_utils import TestClient, TestServer  # noqa: E402

from flexispeech.audio import SAMPLE_RATE, load_audio  # noqa: E402
from flexispeech.streaming.server.app import create_app, level_db  # noqa: E402
from flexispeech.streaming.online import StreamOptions  # noqa: E402
from flexispeech.streaming.transcriber import Transcriber  # noqa: E402


@pytest.fixture(scope="module")
def app():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    transcriber = Transcriber("random:tiny")
    # an aiohttp app belongs to one event loop: a fresh one per session, one shared model
    yield lambda: create_app(transcriber, StreamOptions(audio_ctx=250))
    torch.set_num_threads(n)


def session(app, steps):
    """Run ``steps(client)`` against a new app (from the factory ``app``) on a local test server."""

    async def main():
        async with TestClient(TestServer(app())) as client:
            return await steps(client)

    return asyncio.run(main())


async def events(ws) -> list[dict]:
    out = []
    async for msg in ws:
        out.append(json.loads(msg.data))
        if out[-1].get("final") or out[-1]["type"] == "error":
            break
    return out


def test_the_page_has_the_controls_the_stream_needs(app) -> None:
    async def steps(client):
        resp = await client.get("/")
        return resp.status, await resp.text()

    status, html = session(app, steps)
    assert status == 200
    for element in ('id="file"', 'id="start-file"', 'id="start-mic"', 'id="committed"', 'id="tentative"', 'id="rank"', 'id="level"'):
        assert element in html


def test_an_uploaded_file_is_streamed_chunk_by_chunk(app, assets_dir: Path) -> None:
    data = (assets_dir / "fox_48k_stereo.flac").read_bytes()  # decoded and resampled server-side

    async def steps(client):
        ws = await client.ws_connect("/ws")
        await ws.send_str(json.dumps({"type": "file", "chunk": 1.0, "realtime": False}))
        await ws.send_bytes(data)
        return await events(ws)

    got = session(app, steps)
    duration = load_audio(assets_dir / "fox_48k_stereo.flac").size / SAMPLE_RATE
    assert [e["type"] for e in got] == ["update"] * len(got)
    assert len(got) == int(np.ceil(duration))
    assert [e["final"] for e in got] == [False] * (len(got) - 1) + [True]
    assert got[-1]["audio_s"] == pytest.approx(duration, abs=1e-3)
    assert all(e["rank"] is None for e in got)
    assert all(-100.0 <= e["level_db"] <= 0.0 for e in got) and max(e["level_db"] for e in got) > -40.0
    committed = " ".join(w["text"] for e in got for w in e["committed"])
    assert committed == got[-1]["committed_text"]


def test_microphone_samples_stream_until_stop(app, assets_dir: Path) -> None:
    audio = load_audio(assets_dir / "stella.wav")
    blocks = [audio[i : i + 4096] for i in range(0, audio.size, 4096)]  # as the page's ScriptProcessor sends

    async def steps(client):
        ws = await client.ws_connect("/ws")
        await ws.send_str(json.dumps({"type": "mic", "chunk": 1.0}))
        for block in blocks:
            await ws.send_bytes(block.astype("<f4").tobytes())
        await ws.send_str(json.dumps({"type": "stop"}))
        return await events(ws)

    got = session(app, steps)
    assert len(got) == int(audio.size // SAMPLE_RATE) + 1  # one per full second, then the final one
    assert got[-1]["final"] and got[-1]["audio_s"] == pytest.approx(audio.size / SAMPLE_RATE, abs=1e-3)


def test_bad_requests_get_an_error_event(app) -> None:
    async def steps(client):
        ws = await client.ws_connect("/ws")
        await ws.send_str(json.dumps({"type": "file", "chunk": 1.0}))
        await ws.send_bytes(b"this is not audio")
        first = await events(ws)
        ws = await client.ws_connect("/ws")
        await ws.send_str(json.dumps({"type": "video"}))
        return first + await events(ws)

    got = session(app, steps)
    assert [e["type"] for e in got] == ["error", "error"]
    assert "uploaded file" in got[0]["message"] or "decode" in got[0]["message"]
    assert "'video'" in got[1]["message"]


def test_level_db() -> None:
    assert level_db(np.zeros(1600, dtype=np.float32)) == -100.0
    assert level_db(np.full(1600, 0.1, dtype=np.float32)) == pytest.approx(-20.0, abs=0.01)
