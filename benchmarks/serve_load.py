"""Load test of ``flexispeech serve``: N clients stream a recording in real time at once.

    python benchmarks/serve_load.py --clients 1 2 4 8                      # starts a server
    python benchmarks/serve_load.py --clients 1 8 32 64 --device cuda \\
        --random-shape base --processor DIR                                   # random weights, base shape
    python benchmarks/serve_load.py --url ws://127.0.0.1:8000/ws --clients 4  # a running server

Each client is ``flexispeech.streaming.client.stream_samples``: the recording (the speech
fixtures of tests/assets joined with 0.5 s of silence, ``--repeat`` times) goes out in
256-ms blocks at its own pace, as a microphone would send it; client ``i`` of N starts
``i / N`` of a chunk after the first, as listeners do not start in step. Per N it prints:

* lag: for every update, the seconds between the moment its audio was all sent (its
  ``audio_s`` on the client's clock) and the moment the update arrived: how far behind
  real time the transcript runs; p50 and p90 over all updates of all clients;
* first word: seconds from the first speech sample (first 10 ms above -40 dBFS) to the
  first update that shows a word (tentative or committed);
* WER of each stream's committed text against the reference (Whisper's normalizer), as
  min/max over the clients (n/a with ``--random-shape``: random weights say nothing);
* the mean rank served (``base`` without an adapter) and the server's mean batch size.

Only loopback addresses; every round is bounded by ``--timeout``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

ASSETS = Path(__file__).resolve().parents[1] / "tests" / "assets"
FILES = ("fox.wav", "stella.wav", "meeting.wav")
GAP_S = 0.5


def recording(repeat: int) -> tuple[np.ndarray, str]:
    """The joined fixtures [T] (``repeat`` times) and their reference text."""
    from flexispeech.audio import SAMPLE_RATE, load_audio

    refs = dict(
        line.split("\t", 1) for line in (ASSETS / "transcripts.txt").read_text().splitlines() if line.strip()
    )
    gap = np.zeros(int(GAP_S * SAMPLE_RATE), dtype=np.float32)
    parts = [x for name in FILES * repeat for x in (load_audio(ASSETS / name), gap)][:-1]
    return np.concatenate(parts), " ".join(refs[name] for name in FILES * repeat)


def speech_onset(samples: np.ndarray) -> float:
    """Seconds to the first 10-ms frame above -40 dBFS."""
    frames = samples[: samples.size // 160 * 160].reshape(-1, 160)
    loud = np.flatnonzero(10 * np.log10(np.mean(frames.astype(np.float64) ** 2, axis=1) + 1e-12) > -40.0)
    return float(loud[0]) * 0.01 if loud.size else 0.0


def random_model(shape: str, processor_dir: str, out: Path) -> str:
    """A random-initialised Whisper of ``shape`` (``flexispeech.bench.models.SHAPES``) with
    the processor and generation config of ``processor_dir``, saved to ``out``."""
    import torch
    from transformers import (
        GenerationConfig,
        WhisperConfig,
        WhisperForConditionalGeneration,
        WhisperProcessor,
    )

    from flexispeech.bench.models import SHAPES

    processor = WhisperProcessor.from_pretrained(processor_dir)
    torch.manual_seed(0)
    config = WhisperConfig.from_pretrained(processor_dir)
    for key, value in SHAPES[shape].items():
        setattr(config, key, value)
    model = WhisperForConditionalGeneration(config)
    model.generation_config = GenerationConfig.from_pretrained(processor_dir)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return str(out)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args: argparse.Namespace, model: str, max_streams: int) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "flexispeech",
        "serve",
        "--port",
        str(port),
        "--model",
        model,
        "--device",
        args.device,
        "--max-streams",
        str(max_streams),
        "--audio-ctx",
        args.audio_ctx,
    ]
    if args.adapter:
        cmd += ["--adapter", args.adapter]
    if args.rank is not None:
        cmd += ["--rank", str(args.rank)]
    # The server's log goes to a file, not a pipe: nobody reads a pipe while the rounds run, and
    # once its 64 KiB buffer fills every write of the server (a log line per failed batch) blocks.
    log_path = Path(args.server_log)
    log = log_path.open("w")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log, text=True)
    log.close()  # the child holds its own descriptor
    deadline = time.monotonic() + 300
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, f"ws://127.0.0.1:{port}/ws"
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                sys.exit(f"serve_load: the server did not start: {log_path.read_text()[-2000:]}")
            time.sleep(0.5)


def stats(url: str) -> dict:
    with urllib.request.urlopen(url.replace("ws://", "http://").replace("/ws", "/stats"), timeout=10) as resp:
        return json.loads(resp.read())


def timed_out(url: str, n: int, timeout_s: float, proc: subprocess.Popen | None, before: dict) -> None:
    """Report a round that did not finish: the server's counters since the round began and,
    for a server started here, every thread's stack in its log (``serve`` dumps them on
    SIGUSR1)."""
    now = stats(url)
    done = {k: now[k] - before.get(k, 0) for k in ("batches", "rows", "fallbacks")}
    print(
        f"serve_load: the round of {n} clients did not finish in {timeout_s:g} s; during it the "
        f"server decoded {done['batches']} batches ({done['rows']} updates, {done['fallbacks']} one by one); "
        f"now {now.get('queued', '?')} queued, the current batch busy for {now.get('busy_s', '?')} s",
        file=sys.stderr,
        flush=True,
    )
    if proc is not None and hasattr(signal, "SIGUSR1"):
        proc.send_signal(signal.SIGUSR1)
        time.sleep(1)  # the dump is written by the server's signal handler


async def one_round(url: str, n: int, samples: np.ndarray, chunk_s: float, timeout_s: float) -> list:
    from flexispeech.streaming.client import stream_samples

    async def client(i: int):
        await asyncio.sleep(i / n * chunk_s)
        return await stream_samples(url, samples, chunk_s=chunk_s)

    return await asyncio.wait_for(asyncio.gather(*[client(i) for i in range(n)]), timeout_s)


def chunk_blocks(audio_s: list[float], block_s: float = 0.256) -> list[int]:
    """The audio each update of a stream took, in the client's blocks, from its updates'
    ``audio_s``. A microphone stream's update takes all the audio that has arrived once at
    least a chunk has (``Session.mic``): a chunk of 1 s is 4 blocks while an update decodes
    in under 1.024 s, more when it decodes slower (a larger batch, the wait for the other
    live streams), so the chunking, and with it the buffers and the transcript, depends on
    the decoding time."""
    edges = [0.0] + list(audio_s)
    return [int(round((b - a) / block_s)) for a, b in zip(edges, edges[1:])]


def stream_events(result) -> dict:
    """One stream's updates, for ``--events``."""
    updates = [(e, t) for e, t in zip(result.events, result.arrived_s) if e["type"] == "update"]
    return {
        "text": result.text,
        "chunk_blocks": chunk_blocks([e["audio_s"] for e, _ in updates]),
        "updates": [
            {k: e[k] for k in ("audio_s", "buffer", "committed_text", "tentative", "compute_s", "final")}
            | {"arrived_s": round(t, 3)}
            for e, t in updates
        ],
    }


def replay_alone(online, samples: np.ndarray, chunk_blocks: list[int], block: int = 4096) -> str:
    """The committed text of ``samples`` fed to ``online`` (a fresh ``OnlineTranscriber``)
    with a served stream's chunking (``chunk_blocks``, the last entry its final update) and
    decoded alone, in this process: what the stream would have got without the other
    streams in its batches."""
    pos, last = 0, len(chunk_blocks) - 2  # the last update before the final one ends the audio
    for k, blocks in enumerate(chunk_blocks[:-1]):
        end = samples.size if k == last else pos + blocks * block
        online.insert_audio_chunk(samples[pos:end])
        pos = end
        online.process_iter()
    online.finish()  # the final update takes no new audio
    return online.committed_text


def summarise(n: int, results: list, reference: str, onset: float, score: bool, batch: float) -> dict:
    from flexispeech.evaluation.metrics import error_counts

    lags, first, wers, ranks = [], [], [], []
    for r in results:
        if r.error is not None:
            raise SystemExit(f"serve_load: a stream ended with an error: {r.error}")
        updates = [(e, t) for e, t in zip(r.events, r.arrived_s) if e["type"] == "update"]
        lags += [t - e["audio_s"] for e, t in updates]
        shown = [t for e, t in updates if e["committed_text"] or e["tentative"]]
        first.append((shown[0] if shown else float("nan")) - onset)
        ranks += [e["rank"] for e, _ in updates if e["rank"] is not None]
        if score:
            wers.append(100 * error_counts([reference], [r.text])["wer"])
    return {
        "clients": n,
        "updates": len(lags),
        "lag_p50_s": float(np.percentile(lags, 50)),
        "lag_p90_s": float(np.percentile(lags, 90)),
        "first_word_s": float(np.mean(first)),
        "wer_min": min(wers) if wers else None,
        "wer_max": max(wers) if wers else None,
        "mean_rank": float(np.mean(ranks)) if ranks else None,
        # how many updates were served at each rank (a mixed batch shows as several ranks)
        "rank_counts": {str(k): int(v) for k, v in zip(*np.unique(ranks, return_counts=True))}
        if ranks
        else {},
        "mean_batch": batch,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 2, 4, 8], help="N per round")
    parser.add_argument(
        "--url", help="a running server's websocket (ws://127.0.0.1:PORT/ws); default: start one"
    )
    parser.add_argument("--model", default="whisper-tiny.en")
    parser.add_argument(
        "--random-shape",
        choices=["tiny", "base", "small"],
        help="serve random weights of this Whisper shape (speed only; WER n/a); needs --processor",
    )
    parser.add_argument(
        "--processor", metavar="DIR", help="a Whisper model directory for the tokenizer and configs"
    )
    parser.add_argument(
        "--adapter",
        metavar="DIR",
        help="serve a saved Flexi-LoRA adapter: its router picks each update's rank, so a batch "
        "mixes the ranks of its streams (default: the base model)",
    )
    parser.add_argument("--rank", type=int, help="with --adapter: every update at this rank instead")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--audio-ctx", default="auto")
    parser.add_argument(
        "--samples",
        metavar="NPY",
        help="the recording as a 16 kHz float32 .npy instead (for a machine without soundfile; no WER)",
    )
    parser.add_argument("--chunk", type=float, default=1.0, help="seconds of audio per update (default 1)")
    parser.add_argument("--repeat", type=int, default=2, help="the recording is the fixtures this many times")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds a round may take at most")
    parser.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    parser.add_argument(
        "--events",
        metavar="FILE",
        help="also write every stream's updates (audio_s, buffer, texts) per round as JSON: the "
        "chunking each stream got (it depends on decoding time, see chunk_blocks)",
    )
    parser.add_argument(
        "--server-log", metavar="FILE", help="where the started server's log goes (default: a temporary file)"
    )
    parser.add_argument(
        "--replay",
        action="store_true",
        help="after the rounds, decode every stream again alone in this process (loads the model), "
        "fed in the chunks the server gave it, and count the streams whose served transcript "
        "differs: batching itself changes nothing where that count is 0 (the chunking, which "
        "follows the decoding time, may still differ from a single stream's)",
    )
    args = parser.parse_args()
    if args.random_shape and not args.processor:
        parser.error("--random-shape needs --processor DIR")
    if args.rank is not None and not args.adapter:
        parser.error("--rank needs --adapter DIR")
    if any(n < 1 or n > 256 for n in args.clients):
        parser.error("--clients: each N must be in [1, 256]")

    if args.samples:
        samples, reference = np.load(args.samples).astype(np.float32), None
    else:
        samples, reference = recording(args.repeat)
    onset = speech_onset(samples)
    proc = None
    with tempfile.TemporaryDirectory() as tmp:
        model = (
            random_model(args.random_shape, args.processor, Path(tmp)) if args.random_shape else args.model
        )
        url = args.url
        if url is None:
            args.server_log = args.server_log or str(Path(tmp) / "server.log")
            proc, url = start_server(args, model, max(args.clients))
        try:
            asyncio.run(one_round(url, 1, samples[: 16000 * 2], args.chunk, args.timeout))  # warm-up
            rows, stalled, rounds = [], False, []
            for n in args.clients:
                before = stats(url)
                try:
                    results = asyncio.run(one_round(url, n, samples, args.chunk, args.timeout))
                except TimeoutError:
                    # Say what the server was doing (a stuck decode or a slow one) and stop:
                    # a larger N would time out too.
                    timed_out(url, n, args.timeout, proc, before)
                    stalled = True
                    break
                after = stats(url)
                rounds.append({"clients": n, "streams": [stream_events(r) for r in results]})
                batches = after["batches"] - before["batches"]
                batch = (after["rows"] - before["rows"]) / batches if batches else 0.0
                rows.append(
                    summarise(n, results, reference, onset, bool(reference) and not args.random_shape, batch)
                )
                # batches the server had to decode stream by stream (logged there with the error)
                rows[-1]["fallbacks"] = after.get("fallbacks", 0) - before.get("fallbacks", 0)
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
            if args.replay:  # one model, a fresh stream per served stream
                from flexispeech.commands.stream import load_online
                from flexispeech.streaming.online import OnlineTranscriber

                served = load_online(model, args.adapter, args.rank, args.audio_ctx, args.device)
                for rnd, row in zip(rounds, rows):
                    differ = sum(
                        replay_alone(OnlineTranscriber(served.t, served.options), samples, st["chunk_blocks"])
                        != st["text"]
                        for st in rnd["streams"]
                    )
                    row["replay_differ"] = differ
                    print(
                        f"replay: {differ} of {rnd['clients']} streams differ from their chunking decoded alone",
                        file=sys.stderr,
                        flush=True,
                    )
        finally:
            if proc is not None:
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:  # it finishes queued updates first; enough
                    proc.kill()
                    proc.wait()
                lines = Path(args.server_log).read_text(errors="replace").splitlines()
                tail = lines[-80:] if stalled else lines[-5:]  # with the stack dump
                print(f"server log: {len(lines)} lines; the last ones:", *tail, sep="\n", file=sys.stderr)
    audio_s = samples.size / 16000
    model_name = f"random {args.random_shape}" if args.random_shape else args.model
    adapter = f", adapter {Path(args.adapter).name}" if args.adapter else ""
    if args.adapter and args.rank is not None:
        adapter += f" at rank {args.rank}"
    print(
        f"\n{audio_s:.1f} s recording per client, chunk {args.chunk:g} s, "
        f"model {model_name} on {args.device}{adapter}\n"
    )
    print(
        "| clients | updates | lag p50 (s) | lag p90 (s) | first word (s) | WER per stream (%) | mean rank | mean batch "
        "| batches decoded one by one |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        wer = (
            "n/a"
            if r["wer_min"] is None
            else (
                f"{r['wer_min']:.1f}"
                if r["wer_min"] == r["wer_max"]
                else f"{r['wer_min']:.1f}–{r['wer_max']:.1f}"
            )
        )
        rank = "base" if r["mean_rank"] is None else f"{r['mean_rank']:.1f}"
        print(
            f"| {r['clients']} | {r['updates']} | {r['lag_p50_s']:.2f} | {r['lag_p90_s']:.2f} | {r['first_word_s']:.2f} "
            f"| {wer} | {rank} | {r['mean_batch']:.1f} | {r['fallbacks']} |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    if args.events:
        Path(args.events).write_text(json.dumps(rounds, indent=1))


if __name__ == "__main__":
    main()
