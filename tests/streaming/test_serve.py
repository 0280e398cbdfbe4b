"""The web app on a local test server with the package's client: the page, protocol v1,
file and microphone streams, several streams batched together, on a tiny random Whisper.
(Bad input and limits: test_serve_isolation.py.)"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("aiohttp")
from aiohttp.test_utils import TestServer  # noqa: E402

from flexispeech.audio import SAMPLE_RATE, load_audio  # noqa: E402
from flexispeech.streaming.client import stream_file, stream_samples  # noqa: E402
from flexispeech.streaming.file_feed import stream_file_chunks  # noqa: E402
from flexispeech.streaming.online import OnlineTranscriber, StreamOptions  # noqa: E402
from flexispeech.streaming.server.app import STATE_KEY, create_app  # noqa: E402
from flexispeech.streaming.server.protocol import Limits  # noqa: E402
from flexispeech.streaming.server.session import level_db  # noqa: E402
from flexispeech.streaming.transcriber import Transcriber  # noqa: E402

OPTIONS = StreamOptions(audio_ctx=250)


@pytest.fixture(scope="module")
def transcriber() -> Transcriber:
    return Transcriber("random:tiny")


def served(transcriber: Transcriber, steps, limits: Limits | None = None):
    """Run ``await steps(url, app)`` against a fresh app on a local test server."""

    async def main():
        app = create_app(transcriber, OPTIONS, limits)
        async with TestServer(app) as server:
            return await steps(str(server.make_url("/ws")), app)

    return asyncio.run(main())


def test_the_page_has_the_controls_the_stream_needs(transcriber) -> None:
    async def steps(url, app):
        import aiohttp

        async with aiohttp.ClientSession() as http, http.get(url.replace("/ws", "/")) as resp:
            return resp.status, await resp.text()

    status, html = served(transcriber, steps)
    assert status == 200
    for element in (
        'id="file"',
        'id="start-file"',
        'id="start-mic"',
        'id="committed"',
        'id="tentative"',
        'id="rank"',
        'id="level"',
        "version: 1",
    ):
        assert element in html


def test_an_uploaded_file_is_streamed_chunk_by_chunk(transcriber, assets_dir: Path) -> None:
    data = (assets_dir / "fox_48k_stereo.flac").read_bytes()  # decoded and resampled server-side
    got = served(transcriber, lambda url, app: stream_file(url, data, chunk_s=1.0))
    duration = load_audio(assets_dir / "fox_48k_stereo.flac").size / SAMPLE_RATE
    assert got.events[0] == {"type": "started", "version": 1, "source": "file", "chunk": 1.0}
    updates = got.events[1:]
    assert [e["type"] for e in updates] == ["update"] * len(updates)
    assert len(updates) == int(np.ceil(duration))
    assert [e["final"] for e in updates] == [False] * (len(updates) - 1) + [True]
    assert updates[-1]["audio_s"] == pytest.approx(duration, abs=1e-3)
    assert all(e["rank"] is None for e in updates)
    assert (
        all(-100.0 <= e["level_db"] <= 0.0 for e in updates) and max(e["level_db"] for e in updates) > -40.0
    )
    committed = " ".join(w["text"] for e in updates for w in e["committed"])
    assert committed == got.text


def test_microphone_samples_stream_until_stop(transcriber, assets_dir: Path) -> None:
    audio = load_audio(assets_dir / "stella.wav")
    got = served(transcriber, lambda url, app: stream_samples(url, audio, chunk_s=1.0, realtime=False))
    updates = [e for e in got.events if e["type"] == "update"]
    assert got.error is None and updates[-1]["final"]
    assert updates[-1]["audio_s"] == pytest.approx(audio.size / SAMPLE_RATE, abs=1e-3)
    # every update but the final one decoded at least one chunk of audio more than the last
    seen = [e["audio_s"] for e in updates]
    assert all(b - a >= 1.0 - 1e-6 for a, b in zip(seen[:-2], seen[1:-1]))


def test_concurrent_streams_are_decoded_in_batches_with_their_own_results(
    transcriber, assets_dir: Path
) -> None:
    names = ("fox.wav", "stella.wav", "meeting.wav", "fox_48k_stereo.flac")
    alone = {}
    for name in names:  # each stream on its own, through the single-stream path
        online = OnlineTranscriber(transcriber, OPTIONS)
        list(stream_file_chunks(online, load_audio(assets_dir / name), 0.5))
        alone[name] = online.committed_text

    async def steps(url, app):
        results = await asyncio.gather(
            *[stream_file(url, (assets_dir / n).read_bytes(), chunk_s=0.5) for n in names]
        )
        import aiohttp

        async with aiohttp.ClientSession() as session:  # what the load test reads
            async with session.get(url.replace("/ws", "/stats")) as resp:
                stats = await resp.json()
        return results, app[STATE_KEY].scheduler, stats

    results, scheduler, stats = served(transcriber, steps)
    assert {n: r.text for n, r in zip(names, results)} == alone
    assert scheduler.mean_batch > 1.5  # four streams shared their batches
    # every update decoded in a batch, or (a final one of a buffer decoded just before) made without
    assert scheduler.rows + scheduler.undecoded == sum(len(r.events) - 1 for r in results)
    assert stats == {
        "active": 0,
        "batches": scheduler.batches,
        "rows": scheduler.rows,
        "fallbacks": 0,
        "queued": 0,
        "busy_s": 0.0,
    }


def test_the_command_streams_files_concurrently(assets_dir: Path, capsys) -> None:
    from flexispeech.cli import main

    paths = [str(assets_dir / n) for n in ("fox.wav", "stella.wav")]
    assert (
        main(["stream", *paths, "--concurrent", "--model", "random:tiny", "--json", "--audio-ctx", "250"])
        == 0
    )
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    for path in paths:
        mine = [e for e in events if e["stream"] == path]
        duration = load_audio(path).size / SAMPLE_RATE
        assert len(mine) == int(np.ceil(duration)) and mine[-1]["final"]
        assert mine[-1]["audio_s"] == pytest.approx(duration, abs=1e-3)
    assert main(["stream", paths[0], "--mic"]) == 2


def test_level_db() -> None:
    assert level_db(np.zeros(1600, dtype=np.float32)) == -100.0
    assert level_db(np.full(1600, 0.1, dtype=np.float32)) == pytest.approx(-20.0, abs=0.01)


def test_serve_rejects_bad_limits_before_loading_a_model(capsys) -> None:
    from flexispeech.cli import main

    assert main(["serve", "--max-streams", "0"]) == 2
    with pytest.raises(
        SystemExit
    ) as exit_:  # the float limits: argparse (tests/commands/test_stream_serve_options.py)
        main(["serve", "--idle-timeout", "-1"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert (
        "--max-streams must be > 0" in err and "argument --idle-timeout: expected a finite number > 0" in err
    )
    assert "Traceback" not in err


def test_a_port_taken_after_the_check_is_one_error(transcriber) -> None:
    """The command checks the port before loading the model (tests/commands/
    test_stream_serve_options.py); one taken meanwhile still fails as a ConfigError."""
    import socket

    from flexispeech.errors import ConfigError
    from flexispeech.streaming.server.app import serve

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=f"cannot listen on 127.0.0.1:{port}: .*in use"):
            serve(transcriber, host="127.0.0.1", port=port, options=OPTIONS)


def test_the_event_loop_waits_idle_while_the_last_update_decodes(
    transcriber, assets_dir: Path, monkeypatch
) -> None:
    """After the client's stop, the session waits for its final update without spinning: a
    spinning event loop holds the GIL against the scheduler thread's decoding, which is
    Python work per token (a load test's last updates took several times longer)."""
    import threading
    import time

    import flexispeech.streaming.scheduler as scheduler_module

    decode = scheduler_module.decode_updates

    def slow_final(transcriber, streams, finals):
        if any(finals):
            time.sleep(1.0)  # a long final decode, in the scheduler's thread
        return decode(transcriber, streams, finals)

    monkeypatch.setattr(scheduler_module, "decode_updates", slow_final)
    audio = load_audio(assets_dir / "fox.wav")
    loop_cpu: list[float] = []

    async def steps(url, app):
        assert threading.current_thread() is threading.main_thread()  # the loop's thread
        started = time.thread_time()
        got = await stream_samples(url, audio, chunk_s=1.0, realtime=False)
        loop_cpu.append(time.thread_time() - started)
        return got

    got = served(transcriber, steps)
    assert got.error is None and got.events[-1]["final"]
    assert loop_cpu[0] < 0.5, f"the event loop used {loop_cpu[0]:.2f} s of CPU over a 1-s wait"
