"""``flexispeech serve`` as a real process on the loopback interface: it starts, serves the
page, streams a file sent over its websocket into transcript events, and stops on Ctrl-C
(SIGINT), all within a time bound. A random tiny Whisper keeps it to seconds."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

aiohttp = pytest.importorskip("aiohttp")
from flexispeech.streaming.client import start_message  # noqa: E402

HOST = "127.0.0.1"  # loopback only: nothing outside this machine can reach the test server
START_S, STREAM_S, STOP_S = 120.0, 120.0, 30.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def wait_until_listening(proc: subprocess.Popen, port: int, deadline: float) -> None:
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"serve exited with {proc.returncode}: {proc.stderr.read()[-2000:]}")
        try:
            socket.create_connection((HOST, port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"serve did not listen on {HOST}:{port} within {START_S:.0f} s")


async def stream_file(port: int, data: bytes) -> tuple[int, list[dict]]:
    """GET / (status), then one file session over /ws: every event up to the final one."""
    timeout = aiohttp.ClientTimeout(total=STREAM_S)
    async with aiohttp.ClientSession(timeout=timeout) as client:
        async with client.get(f"http://{HOST}:{port}/") as resp:
            status = resp.status
        async with client.ws_connect(f"http://{HOST}:{port}/ws") as ws:
            await ws.send_str(start_message("file", 1.0, realtime=False))  # protocol v1
            await ws.send_bytes(data)
            events = []
            async for msg in ws:
                if json.loads(msg.data)["type"] == "started":
                    continue
                events.append(json.loads(msg.data))
                if events[-1].get("final") or events[-1]["type"] == "error":
                    break
    return status, events


def test_serve_process_streams_a_file_and_stops(assets_dir: Path) -> None:
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "flexispeech",
        "serve",
        "--host",
        HOST,
        "--port",
        str(port),
        "--model",
        "random:tiny",
        "--audio-ctx",
        "150",
    ]
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")  # tiny model: one thread is fastest
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until_listening(proc, port, time.monotonic() + START_S)
        status, events = asyncio.run(stream_file(port, (assets_dir / "fox.wav").read_bytes()))
        assert status == 200
        assert events and [e["type"] for e in events] == ["update"] * len(events), events[-1:]
        final = events[-1]
        assert final["final"] and final["audio_s"] == pytest.approx(2.732, abs=1e-3)
        assert isinstance(final["committed_text"], str) and len(events) == 3  # 1-s chunks of 2.7 s
        # SIGUSR1: every thread's stack to the log (where a stuck server waits), and it serves on
        proc.send_signal(signal.SIGUSR1)
        assert asyncio.run(stream_file(port, (assets_dir / "fox.wav").read_bytes()))[1][-1]["final"]
        proc.send_signal(signal.SIGINT)  # Ctrl-C: aiohttp shuts down cleanly
        _, err = proc.communicate(timeout=STOP_S)
        assert proc.returncode == 0, err[-2000:]
        assert f"open http://{HOST}:{port}/" in err and "Traceback" not in err
        assert "(most recent call first)" in err
        assert "scheduler.py" in err and "in run_app" in err  # the model's thread and the server's
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
