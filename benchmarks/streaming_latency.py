"""Streaming vs offline transcription: WER, commit latency and real-time factor.

    python benchmarks/streaming_latency.py --chunks 0.5 1 2 [--model whisper-tiny.en]

Audio: each speech fixture of tests/assets alone, and all of them joined with 0.5 s of
silence (a ~9-s stream that needs the agreement, the prompt and, at 2-s chunks, a buffer
trim). Every stream is played in real time (``--realtime`` semantics: when decoding falls
behind, the audio that arrived meanwhile goes in at once), so latency is what a user sees.

* WER: streamed and offline transcripts of the same audio against the reference
  transcripts (corpus-level, Whisper's English normalizer). Offline decoding gets the same
  token cap per second of audio as streaming, which keeps a 30-s window from looping.
* commit latency: wall-clock time at which a word is committed minus the stream time of
  its end (interpolated within its Whisper segment); mean and 90th percentile.
* RTF: decoding seconds over audio seconds (below 1: keeps up with live audio).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

ASSETS = Path(__file__).resolve().parents[1] / "tests" / "assets"
GAP_S = 0.5
FILES = ("fox.wav", "stella.wav", "meeting.wav")


def load_streams() -> list[tuple[str, np.ndarray, str]]:
    """(name, samples [T], reference) for each fixture and their concatenation."""
    from flexispeech.audio import SAMPLE_RATE, load_audio

    refs = dict(
        line.split("\t", 1) for line in (ASSETS / "transcripts.txt").read_text().splitlines() if line.strip()
    )
    singles = [(name, load_audio(ASSETS / name), refs[name]) for name in FILES]
    gap = np.zeros(int(GAP_S * SAMPLE_RATE), dtype=np.float32)
    joined = np.concatenate([x for _, a, _ in singles for x in (a, gap)][:-1])
    return singles + [("joined", joined, " ".join(r for _, _, r in singles))]


def run_stream(online, samples: np.ndarray, chunk_s: float) -> tuple[str, list[float], float]:
    """(transcript, per-word commit latencies, decoding seconds) of one real-time stream."""
    from flexispeech.streaming.file_feed import stream_file_chunks

    online.reset()
    latencies, compute = [], 0.0
    t0 = time.perf_counter()
    for update in stream_file_chunks(online, samples, chunk_s, realtime=True):
        now = time.perf_counter() - t0
        compute += update.compute_s
        latencies += [now - w.end for w in update.committed]
    return online.committed_text, latencies, compute


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="whisper-tiny.en")
    parser.add_argument("--chunks", type=float, nargs="+", default=[0.5, 1.0, 2.0])
    parser.add_argument("--audio-ctx", default="auto", help="'auto' or encoder positions (1500 = 30 s)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    args = parser.parse_args()

    import torch
    from transformers.utils import logging as hf_logging

    from flexispeech.audio import SAMPLE_RATE
    from flexispeech.evaluation.metrics import error_counts
    from flexispeech.streaming.online import TOKENS_BASE, TOKENS_PER_S, OnlineTranscriber, StreamOptions
    from flexispeech.streaming.transcriber import Transcriber

    hf_logging.set_verbosity_error()
    if args.threads:
        torch.set_num_threads(args.threads)
    ctx = args.audio_ctx if args.audio_ctx == "auto" else int(args.audio_ctx)
    transcriber = Transcriber(args.model)
    streams = load_streams()
    offline = []
    t0 = time.perf_counter()
    for _, samples, _ in streams:  # one at a time: each gets its own token cap
        transcriber.max_new_tokens = int(TOKENS_BASE + TOKENS_PER_S * samples.size / SAMPLE_RATE)
        offline.append(transcriber.transcribe([samples])[0].text)
    offline_s = time.perf_counter() - t0
    audio_s = sum(s.size for _, s, _ in streams) / SAMPLE_RATE
    refs = [r for _, _, r in streams]
    rows = [
        {
            "mode": "offline",
            "chunk_s": None,
            "wer": error_counts(refs, offline)["wer"],
            "latency_mean_s": None,
            "latency_p90_s": None,
            "rtf": offline_s / audio_s,
        }
    ]
    online = OnlineTranscriber(transcriber, StreamOptions(audio_ctx=ctx))
    for chunk in args.chunks:
        texts, lat, compute = [], [], 0.0
        for _, samples, _ in streams:
            text, word_lat, secs = run_stream(online, samples, chunk)
            texts.append(text)
            lat += word_lat
            compute += secs
        rows.append(
            {
                "mode": f"stream (audio_ctx={ctx})",
                "chunk_s": chunk,
                "wer": error_counts(refs, texts)["wer"],
                "latency_mean_s": float(np.mean(lat)),
                "latency_p90_s": float(np.percentile(lat, 90)),
                "rtf": compute / audio_s,
                "texts": texts,
            }
        )
    rows[0]["texts"] = offline
    print("| mode | chunk (s) | WER | commit latency mean (s) | p90 (s) | RTF |\n|---|---|---|---|---|---|")
    for r in rows:
        fmt = lambda v: "–" if v is None else f"{v:.2f}"  # noqa: E731
        print(
            f"| {r['mode']} | {fmt(r['chunk_s'])} | {100 * r['wer']:.1f}% | {fmt(r['latency_mean_s'])} "
            f"| {fmt(r['latency_p90_s'])} | {r['rtf']:.2f} |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
