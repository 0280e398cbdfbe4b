"""Ctrl-C stops streams promptly, as real processes on a tiny random Whisper: ``stream
--concurrent --realtime`` (which played every file to its end first) and ``serve`` with a
stream open (which waited for that stream to end). The files last 40 s; each process must
be gone within STOP_S of SIGINT."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from flexispeech.audio import SAMPLE_RATE, load_audio

LONG_S, STOP_S, START_S = 40.0, 10.0, 120.0
TINY = ["--model", "random:tiny", "--audio-ctx", "150"]
ENV = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")  # tiny model: one thread is fastest


@pytest.fixture
def long_wav(assets_dir: Path, tmp_path: Path) -> Path:
    """fox.wav repeated to LONG_S seconds."""
    clip = load_audio(assets_dir / "fox.wav")
    path = tmp_path / "long.wav"
    sf.write(path, np.resize(clip, int(LONG_S * SAMPLE_RATE)), SAMPLE_RATE)
    return path


def flexispeech(*argv: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "flexispeech", *argv],
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def stop(proc: subprocess.Popen) -> tuple[float, str]:
    """SIGINT, then (seconds until the process was gone, its stderr); kills it past STOP_S."""
    proc.send_signal(signal.SIGINT)
    sent = time.monotonic()
    try:
        _, err = proc.communicate(timeout=STOP_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise AssertionError(f"still running {STOP_S:.0f} s after Ctrl-C") from None
    return time.monotonic() - sent, err


def test_ctrl_c_stops_concurrent_realtime_streams(long_wav: Path) -> None:
    proc = flexispeech("stream", str(long_wav), str(long_wav), "--concurrent", "--realtime", "--json", *TINY)
    try:
        while not (line := proc.stdout.readline()).startswith("{"):  # the first update: streaming
            assert line, f"stream exited with {proc.wait()}: {proc.stderr.read()[-2000:]}"
        assert json.loads(line)["audio_s"] < 5.0
        _, err = stop(proc)
        assert proc.returncode == 130, err[-2000:]
        assert err.strip().splitlines()[-1] == "flexispeech stream: interrupted"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_ctrl_c_closes_an_open_stream_of_serve(long_wav: Path) -> None:
    aiohttp = pytest.importorskip("aiohttp")
    from test_serve_process import HOST, free_port, wait_until_listening  # the real server's helpers

    from flexispeech.streaming.client import start_message

    port = free_port()
    proc = flexispeech("serve", "--host", HOST, "--port", str(port), *TINY)

    async def stream_and_interrupt() -> tuple[int | None, float]:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=START_S)) as client:
            async with client.ws_connect(f"http://{HOST}:{port}/ws") as ws:
                await ws.send_str(start_message("file", 1.0, realtime=True))
                await ws.send_bytes(long_wav.read_bytes())
                while json.loads((await ws.receive()).data)["type"] != "update":
                    pass  # "started"
                proc.send_signal(signal.SIGINT)
                sent = time.monotonic()
                async for _ in ws:  # the updates sent before the close; reading answers the close
                    pass
                return ws.close_code, sent

    try:
        wait_until_listening(proc, port, time.monotonic() + START_S)
        code, sent = asyncio.run(stream_and_interrupt())
        _, err = proc.communicate(timeout=STOP_S)  # playing the file out: ~39 s more
        assert time.monotonic() - sent < STOP_S
        assert proc.returncode == 0 and "Traceback" not in err, err[-2000:]
        assert code == aiohttp.WSCloseCode.GOING_AWAY  # told, not dropped
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
