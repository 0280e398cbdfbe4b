"""The online transcriber: events, bounded buffer and per-update ranks on a tiny random
Whisper (fast); the real tiny.en streaming the speech fixtures against offline decoding (slow)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from routed_tiny import routed_tiny_transcriber

from flexispeech.audio import SAMPLE_RATE, load_audio
from flexispeech.streaming.file_feed import stream_file_chunks
from flexispeech.streaming.online import OnlineTranscriber, StreamOptions
from flexispeech.streaming.transcriber import Transcriber

FILES = ("fox.wav", "stella.wav", "meeting.wav")
GAP_S = 0.5


def joined(assets_dir: Path, noise_db: float | None = None, seed: int = 0) -> np.ndarray:
    """The three fixtures with 0.5 s of silence between them (~9.3 s) [T]; with
    ``noise_db``, white noise at that SNR (vs the clip's power) over everything after the first."""
    rng = np.random.default_rng(seed)
    parts = []
    for i, name in enumerate(FILES):
        clip = load_audio(assets_dir / name)
        if noise_db is not None and i > 0:
            power = float(np.mean(clip**2))
            clip = clip + rng.normal(0.0, np.sqrt(power / 10 ** (noise_db / 10)), clip.size).astype(
                np.float32
            )
        gap = np.zeros(int(GAP_S * SAMPLE_RATE), dtype=np.float32)
        if noise_db is not None and i > 0:
            gap = gap + rng.normal(0.0, np.sqrt(power / 10 ** (noise_db / 10)), gap.size).astype(np.float32)
        parts += [clip, gap]
    return np.concatenate(parts[:-1])


@pytest.fixture(scope="module")
def random_transcriber():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls: a busy multi-core pool only adds spin-waits
    yield Transcriber("random:tiny")
    torch.set_num_threads(n)


def test_events_cover_the_stream_and_the_buffer_stays_bounded(random_transcriber, assets_dir: Path) -> None:
    audio = joined(assets_dir)
    options = StreamOptions(trim_s=3.0, max_buffer_s=4.0, audio_ctx=250)
    online = OnlineTranscriber(random_transcriber, options)
    updates = list(stream_file_chunks(online, audio, chunk_s=1.0))
    n_chunks = int(np.ceil(audio.size / SAMPLE_RATE))
    assert len(updates) == n_chunks  # one per chunk but the last, then the final one
    assert [u.final for u in updates] == [False] * (n_chunks - 1) + [True]
    assert [round(u.audio_s, 3) for u in updates[:-1]] == [float(i) for i in range(1, n_chunks)]
    assert updates[-1].audio_s == pytest.approx(audio.size / SAMPLE_RATE)
    assert all(u.rank is None for u in updates)  # no adapter: the base model
    # the buffer never grows past the cap plus one chunk, and it was cut at least once
    assert max(u.buffer_s for u in updates) <= options.max_buffer_s + 1.0
    assert max(u.buffer_start_s for u in updates) > 0.0
    # everything committed is reported exactly once, in order, with increasing times
    words = [w for u in updates for w in u.committed]
    assert " ".join(w.text for w in words) == online.committed_text
    assert all(a.start <= b.start + 1e-6 for a, b in zip(words, words[1:]))
    assert online.audio.size == 0 and online.hyp.tentative == []
    event = json.loads(json.dumps(updates[-1].to_dict(online.committed_text)))
    assert (
        event["final"] is True and event["rank"] is None and event["committed_text"] == online.committed_text
    )


def test_a_short_buffer_waits_for_more_audio(random_transcriber) -> None:
    online = OnlineTranscriber(random_transcriber)
    online.insert_audio_chunk(np.zeros(SAMPLE_RATE // 2, dtype=np.float32))
    update = online.process_iter()
    assert update.committed == [] and update.rank is None and update.compute_s == 0.0
    assert update.buffer_s == pytest.approx(0.5)


def test_each_update_routes_its_rank_from_the_buffer_snr(assets_dir: Path, tmp_path: Path) -> None:
    transcriber = routed_tiny_transcriber(tmp_path)

    audio = joined(assets_dir, noise_db=5.0)  # clean first clip, then noisy speech
    online = OnlineTranscriber(transcriber, StreamOptions(trim_s=2.0, max_buffer_s=3.0, audio_ctx=250))
    clean = load_audio(assets_dir / "fox.wav")
    assert online.route(clean)[0] == 2
    rank, signals = online.route(audio[-3 * SAMPLE_RATE :])
    assert rank == 8 and signals["snr_db"] < 20.0
    updates = list(stream_file_chunks(online, audio, chunk_s=1.0))
    ranks = [u.rank for u in updates]
    assert ranks[0] == 2  # the first second: clean speech
    assert ranks[-1] == 8  # the buffer now holds only noisy speech
    assert all(r == (2 if u.signals["snr_db"] >= 20.0 else 8) for r, u in zip(ranks, updates))


def test_ranks_for_is_fixed_rank_then_router_then_default(
    random_transcriber, assets_dir: Path, tmp_path: Path
) -> None:
    """The one routing chain that offline transcription and streaming share."""
    from flexispeech import FlexiLoraConfig, ThresholdRouter, attach_router, inject, save_adapter
    from flexispeech.errors import ConfigError
    from flexispeech.models.whisper import FAMILY

    model, processor = FAMILY.load("random:tiny")
    model.save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    inject(model, FlexiLoraConfig(ranks=(2, 4, 8), target_modules=FAMILY.default_targets))
    save_adapter(model, tmp_path / "plain")  # no router
    # score = -z(snr_db) - z(proxy); the proxy's mean is 5, so a neutral proxy adds nothing
    router = ThresholdRouter(
        (2, 4, 8),
        weights={"snr_db": -1.0, "proxy": -1.0},
        thresholds=(-1.0, 1.0),
        means={"snr_db": 20.0, "proxy": 5.0},
        stds={"snr_db": 10.0, "proxy": 1.0},
    )
    attach_router(model, router)
    save_adapter(model, tmp_path / "routed")
    snr = {"snr_db": torch.tensor([40.0, 20.0, 0.0])}  # z = 2, 0, -2
    routed = Transcriber(str(tmp_path / "model"), adapter=tmp_path / "routed")
    assert routed.needed_signals() == {"snr_db", "proxy"}
    assert routed.ranks_for(snr, neutral=("proxy", "proxy_entropy")).tolist() == [2, 4, 8]
    full = {**snr, "proxy": torch.tensor([9.0, 9.0, 9.0])}  # a computed proxy wins over the neutral one
    assert routed.ranks_for(full, neutral=("proxy",)).tolist() == [2, 2, 2] == router(full).tolist()
    with pytest.raises(ConfigError, match=r"needs signals \['proxy'\]"):
        routed.ranks_for(snr)  # not declared neutral: a missing signal is an error
    fixed = Transcriber(str(tmp_path / "model"), adapter=tmp_path / "routed", rank=4)
    assert fixed.ranks_for(full).tolist() == [4, 4, 4]
    plain = Transcriber(str(tmp_path / "model"), adapter=tmp_path / "plain")
    assert plain.router.signal_names == () and plain.ranks_for(snr).tolist() == [8, 8, 8]  # r_max
    assert random_transcriber.ranks_for(snr) is None  # no adapter: the base model
    # streaming computes no proxy: the router's neutral value stands in (a 0 would give rank 8)
    rank, signals = OnlineTranscriber(routed).route(load_audio(assets_dir / "fox.wav"))
    assert "proxy" not in signals and signals["snr_db"] > 30.0 and rank == 2
    # a router behind the novelty gate reads the embedding, which streaming does not compute:
    # refused when the stream is set up, not at its first update
    from flexispeech.lora.gate import GatedRouter, NoveltyGate
    from flexispeech.lora.io import save_router

    gate = NoveltyGate.fit(torch.randn(20, 8), components=2)
    save_router(tmp_path / "routed", GatedRouter(router, gate), tmp_path / "gated")
    with pytest.raises(ConfigError, match="streaming does not compute"):
        OnlineTranscriber(Transcriber(str(tmp_path / "model"), adapter=tmp_path / "gated"))
    OnlineTranscriber(
        Transcriber(str(tmp_path / "model"), adapter=tmp_path / "gated", rank=4)
    )  # a fixed rank streams


@pytest.mark.slow
def test_streaming_ends_with_the_offline_words(assets_dir: Path, transcripts: dict[str, str]) -> None:
    from flexispeech.evaluation.metrics import error_counts
    from flexispeech.streaming.online import TOKENS_BASE, TOKENS_PER_S

    audio = joined(assets_dir)
    reference = " ".join(transcripts[name] for name in FILES)
    transcriber = Transcriber(
        "whisper-tiny.en", max_new_tokens=int(TOKENS_BASE + TOKENS_PER_S * audio.size / SAMPLE_RATE)
    )
    offline = transcriber.transcribe([audio])[0].text
    online = OnlineTranscriber(transcriber)
    updates = list(stream_file_chunks(online, audio, chunk_s=1.0))
    streamed = online.committed_text
    gap = error_counts([offline], [streamed])["wer"]
    assert gap <= 0.15, (offline, streamed)
    assert error_counts([reference], [streamed])["wer"] <= 0.15, streamed
    # words were committed while the stream was running, not only at the end
    assert sum(len(u.committed) for u in updates[:-1]) >= len(streamed.split()) // 2


def test_stream_command_prints_one_json_event_per_update(assets_dir: Path, capsys) -> None:
    from flexispeech.cli import main

    path = assets_dir / "stella.wav"
    assert (
        main(
            ["stream", str(path), "--model", "random:tiny", "--json", "--chunk", "1.5", "--audio-ctx", "250"]
        )
        == 0
    )
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    duration = load_audio(path).size / SAMPLE_RATE
    assert len(events) == int(np.ceil(duration / 1.5))
    assert events[-1]["final"] and events[-1]["audio_s"] == pytest.approx(duration, abs=1e-3)
    assert all(e["rank"] is None for e in events)
    assert main(["stream", str(path), "--mic"]) == 2  # a file or the microphone, not both
    assert main(["stream", str(path), "--audio-ctx", "wide"]) == 2
    assert "--audio-ctx" in capsys.readouterr().err
