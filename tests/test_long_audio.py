"""Long recordings are read block by block: an hour-long file is decoded, resampled and fed
to streaming without ever being held whole; ``transcribe`` decodes a file longer than its
block size block by block."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import flexispeech.audio
from flexispeech.audio import audio_duration, iter_audio_blocks, load_audio
from flexispeech.cli import main
from flexispeech.streaming.file_feed import BlockFeed

HOUR_SR = 8_000  # the lowest rate the toolkit promises; resampled 2x on reading


def write_minutes(path: Path, minutes: int) -> Path:
    """``minutes`` of a quiet tone with a click at the start of every minute, 8 kHz 16-bit
    mono (58 MB an hour), written a minute at a time."""
    t = np.arange(60 * HOUR_SR) / HOUR_SR
    minute = (0.05 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    minute[:80] = 0.9  # a click marks the start of every minute
    with sf.SoundFile(path, "w", HOUR_SR, 1, subtype="PCM_16") as f:
        for _ in range(minutes):
            f.write(minute)
    return path


@pytest.fixture(scope="module")
def hour_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One hour of :func:`write_minutes`."""
    return write_minutes(tmp_path_factory.mktemp("long") / "hour.wav", 60)


def test_an_hour_is_decoded_in_blocks_with_bounded_memory(hour_file: Path) -> None:
    assert audio_duration(hour_file) == pytest.approx(3600.0)
    decoded_bytes = 3600 * 16_000 * 4  # the whole file at 16 kHz float32: 230 MB
    total, clicks = 0, []
    tracemalloc.start()
    try:
        for block in iter_audio_blocks(hour_file, block_s=30.0):
            assert block.dtype == np.float32 and block.ndim == 1
            clicks += [total + int(i) for i in np.flatnonzero(block > 0.5)]
            total += block.size
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert total == 3600 * 16_000
    assert peak < decoded_bytes / 20, (
        f"peak {peak / 1e6:.1f} MB"
    )  # a few 30-s blocks (2 MB each), never the hour
    starts = [c for n, c in enumerate(clicks) if n == 0 or c - clicks[n - 1] > 1000]
    assert len(starts) == 60  # every minute's click lands at its minute: no samples lost or added
    assert starts[1] - starts[0] == 60 * 16_000 and starts[-1] - starts[0] == 59 * 60 * 16_000


def test_streaming_feed_over_an_hour_holds_one_block(hour_file: Path) -> None:
    """What ``flexispeech stream FILE`` feeds the online transcriber: 1-s chunks from blocks."""
    feed = BlockFeed(iter_audio_blocks(hour_file, block_s=30.0))
    tracemalloc.start()
    try:
        fed = 0
        while not feed.done:
            fed += feed.take(16_000 * 20).size  # 20-s chunks keep the test quick
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert fed == 3600 * 16_000 and peak < 3600 * 16_000 * 4 / 20


@pytest.mark.parametrize("sr", [8000, 22050, 44100, 96000])
def test_blocks_equal_one_shot_decoding(tmp_path: Path, sr: int) -> None:
    x = np.random.default_rng(sr).standard_normal((int(3.3 * sr), 2)).astype(np.float32) * 0.1
    sf.write(tmp_path / "x.flac", x, sr)
    whole = load_audio(tmp_path / "x.flac")
    blocks = np.concatenate(list(iter_audio_blocks(tmp_path / "x.flac", block_s=0.7)))
    assert blocks.shape == whole.shape
    np.testing.assert_allclose(blocks, whole, atol=1e-5)  # soxr's stream carries its filter state


def test_transcribe_and_stream_read_long_files_in_blocks(tmp_path: Path, monkeypatch, capsys) -> None:
    """A file longer than the transcriber's block size never goes through ``load_audio``
    (which would hold it whole), in ``transcribe`` and in ``stream``."""
    import flexispeech.streaming.transcriber as transcriber

    path = tmp_path / "long.wav"
    t = np.arange(7 * 16_000) / 16_000
    speech_like = (0.2 * np.sin(2 * np.pi * 300 * t) * (np.sin(2 * np.pi * 0.5 * t) > 0)).astype(np.float32)
    sf.write(path, speech_like, 16_000)

    def no_whole_file(p, sample_rate=16_000):
        raise AssertionError(f"{p} was loaded whole")

    monkeypatch.setattr(transcriber, "load_audio", no_whole_file)
    monkeypatch.setattr(flexispeech.audio, "load_audio", no_whole_file)
    monkeypatch.setitem(transcriber.LONG_BLOCK_S, "whisper", 2.5)
    monkeypatch.setattr(transcriber, "CUT_SEARCH_S", 1.0)
    assert (
        main(
            [
                "transcribe",
                str(path),
                "--model",
                "random:tiny",
                "--audio-ctx",
                "150",
                "--max-new-tokens",
                "2",
                "--json",
            ]
        )
        == 0
    )
    row = json.loads(capsys.readouterr().out)
    assert row["duration"] == pytest.approx(7.0) and row["signals"]["duration"] == pytest.approx(7.0)
    assert np.isfinite(row["signals"]["snr_db"])
    assert (
        main(["stream", str(path), "--model", "random:tiny", "--audio-ctx", "150", "--chunk", "2", "--json"])
        == 0
    )
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert events[-1]["final"] and events[-1]["audio_s"] == pytest.approx(7.0)


def test_quiet_cut_falls_in_a_pause() -> None:
    from flexispeech.streaming.transcriber import quiet_cut

    x = np.full(10 * 16_000, 0.3, dtype=np.float32)
    x[int(7.2 * 16_000) : int(7.5 * 16_000)] = 0.0  # a 300-ms pause in the last 5 s
    cut = quiet_cut(x)
    assert 7.2 * 16_000 <= cut <= 7.5 * 16_000


# Runs a command and reports its peak resident memory (Linux: KiB) on the last stderr line.
PEAK_RSS_CHILD = """import resource, sys
from flexispeech.cli import main
try:
    code = main(sys.argv[1:])
finally:
    print(f"peak_rss_kib={resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}", file=sys.stderr)
sys.exit(code)
"""


def transcribe_peak_rss(path: Path) -> tuple[dict, int]:
    """``flexispeech transcribe PATH --json`` in a fresh process: (its row, peak RSS bytes)."""
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        # glibc otherwise raises its mmap threshold as large arrays are freed and keeps
        # later ones in the heap, whose high-water mark then stands in for live memory
        "MALLOC_MMAP_THRESHOLD_": str(128 * 1024),
    }
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            PEAK_RSS_CHILD,
            "transcribe",
            str(path),
            "--model",
            "random:tiny",
            "--max-new-tokens",
            "2",
            "--json",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=1800,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    peak = proc.stderr.strip().splitlines()[-1]
    assert peak.startswith("peak_rss_kib="), proc.stderr[-2000:]
    return json.loads(proc.stdout), int(peak.split("=")[1]) * 1024


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="reads ru_maxrss in KiB, its unit on Linux")
def test_transcribe_an_hour_in_bounded_memory(hour_file: Path, tmp_path: Path) -> None:
    """An hour costs no more memory than 12 minutes: ``transcribe`` holds a few 5-minute
    blocks, never the hour (230 MB decoded at 16 kHz float32). The 12-minute run already
    has every fixed cost (libraries, model, a full carry-over between blocks)."""
    short_row, short_peak = transcribe_peak_rss(write_minutes(tmp_path / "twelve.wav", 12))
    row, peak = transcribe_peak_rss(hour_file)
    assert short_row["duration"] == pytest.approx(720.0) and row["duration"] == pytest.approx(3600.0)
    assert row["signals"]["duration"] == pytest.approx(3600.0)
    decoded_bytes = 3600 * 16_000 * 4
    growth = peak - short_peak
    assert growth < decoded_bytes / 4, (
        f"peak {peak / 1e6:.0f} MB for an hour vs {short_peak / 1e6:.0f} MB for 12 min"
    )
