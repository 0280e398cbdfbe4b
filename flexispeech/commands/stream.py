"""``flexispeech stream FILE...``: transcribe audio as a stream, printing text as it is committed.

Several files play one after another, or with ``--concurrent`` all at once through the
multi-stream scheduler (the server's batching, without a browser)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from typing import Any

from flexispeech.commands.options import positive_float
from flexispeech.models.whisper import DEFAULT_SOURCE

HELP = "stream a file (or the microphone) through Whisper, printing committed text as it grows"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("audio", nargs="*", metavar="FILE", help="audio files (anything soundfile reads)")
    parser.add_argument(
        "--mic", action="store_true", help="stream the default microphone (needs the 'mic' extra)"
    )
    parser.add_argument(
        "--chunk",
        type=positive_float,
        default=1.0,
        metavar="S",
        help="seconds of audio per update (default 1.0)",
    )
    parser.add_argument("--realtime", action="store_true", help="feed the file at its own pace, as if live")
    parser.add_argument(
        "--concurrent",
        action="store_true",
        help="stream all FILEs at once, their updates decoded together in batches (lines start with the file)",
    )
    parser.add_argument(
        "--model", default=DEFAULT_SOURCE, help=f"Whisper model name or directory (default {DEFAULT_SOURCE})"
    )
    parser.add_argument(
        "--adapter", metavar="DIR", help="a saved Flexi-LoRA adapter; its router picks each update's rank"
    )
    parser.add_argument("--rank", type=int, help="serve every update at this adapter rank instead of routing")
    parser.add_argument(
        "--audio-ctx",
        metavar="N",
        help="encoder window in 20-ms positions (500 = 10 s), or 'auto': the buffer rounded up to 10 s "
        "(default: the window the adapter was trained with; 1500 = 30 s without an adapter)",
    )
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--json", action="store_true", help="print one JSON event per update")


def audio_ctx_option(value: str) -> str | int:
    """``--audio-ctx`` as ``StreamOptions.audio_ctx``: 'auto' or a positive number of positions."""
    from flexispeech.errors import ConfigError

    if value == "auto":
        return value
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise ConfigError(f"--audio-ctx must be 'auto' or a number of positions >= 1, got {value!r}")
    return n


def stream_window(value: str | None, adapter: str | None) -> str:
    """``--audio-ctx`` resolved: the adapter's training window (30 s without one) when not
    given; a warning line when a given window differs from the adapter's (see
    ``lora.io.serving_window``; 'auto' varies with the buffer, so it always differs)."""
    from flexispeech.lora.io import adapter_audio_ctx, serving_window
    from flexispeech.models.whisper import FULL_POSITIONS

    if value is None:
        return str(adapter_audio_ctx(adapter) or FULL_POSITIONS) if adapter else str(FULL_POSITIONS)
    option = audio_ctx_option(value)
    if adapter is None:
        return value
    if option == "auto":
        print(
            f"warning: stream: --audio-ctx auto serves windows of 10 s steps; the adapter was trained with "
            f"{adapter_audio_ctx(adapter)} positions",
            file=sys.stderr,
        )
        return value
    return str(serving_window(int(option), adapter, "stream"))


def load_online(
    model: str, adapter: str | None, rank: int | None, audio_ctx: str, device: str = "cpu"
) -> Any:
    """An ``OnlineTranscriber`` for the command line and the web server."""
    from transformers.utils import logging as hf_logging

    from flexispeech.streaming.online import OnlineTranscriber, StreamOptions
    from flexispeech.streaming.transcriber import Transcriber

    # Our output is the transcript: keep transformers' load bars and generation advice quiet.
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    transcriber = Transcriber(model=model, adapter=adapter, rank=rank, device=device, family="whisper")
    return OnlineTranscriber(transcriber, StreamOptions(audio_ctx=audio_ctx_option(audio_ctx)))


def microphone_updates(online: Any, chunk_s: float) -> Iterator[Any]:
    """Updates from the default microphone until Ctrl-C, then the final one."""
    import queue

    from flexispeech.audio import SAMPLE_RATE
    from flexispeech.errors import FlexispeechError

    try:
        import sounddevice
    except (ImportError, OSError) as err:  # OSError: the package is there, PortAudio is not
        raise FlexispeechError(
            f"--mic needs sounddevice and PortAudio (pip install 'flexispeech[mic]'): {err}"
        ) from None
    blocks: queue.Queue = queue.Queue()
    stream = sounddevice.InputStream(
        samplerate=SAMPLE_RATE,
        channels=1,
        dtype="float32",
        callback=lambda data, *_: blocks.put(data[:, 0].copy()),
    )
    with stream:
        print("listening; Ctrl-C to stop", file=sys.stderr, flush=True)
        try:
            while True:
                got = 0
                while got < chunk_s * SAMPLE_RATE:
                    block = blocks.get()
                    online.insert_audio_chunk(block)
                    got += block.size
                while not blocks.empty():  # decoding fell behind: take everything that arrived
                    online.insert_audio_chunk(blocks.get())
                yield online.process_iter()
        except KeyboardInterrupt:
            pass
    yield online.finish()


def stream_concurrently(online: Any, paths: list[str], chunk_s: float, realtime: bool, emit: Any) -> None:
    """Stream every file of ``paths`` at once through one ``Scheduler``; ``emit(path,
    stream, update)`` is called for every update (from the files' threads, one at a time).
    Ctrl-C (or a file's error) stops every file at its next chunk, not after it played out."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from flexispeech.audio import iter_audio_blocks
    from flexispeech.streaming.file_feed import stream_file_chunks
    from flexispeech.streaming.online import OnlineTranscriber
    from flexispeech.streaming.scheduler import Scheduler

    lock = threading.Lock()
    stop = threading.Event()

    def one(path: str) -> None:
        stream = OnlineTranscriber(online.t, online.options)
        blocks = iter_audio_blocks(path, block_s=max(30.0, chunk_s))
        chunks = stream_file_chunks(
            stream, blocks, chunk_s, realtime=realtime, decode=scheduler.decode, stop=stop
        )
        for update in chunks:
            with lock:
                emit(path, stream, update)

    with (
        Scheduler(online.t, max_batch=max(1, len(paths))) as scheduler,
        ThreadPoolExecutor(len(paths)) as pool,
    ):
        try:
            for done in [pool.submit(one, p) for p in paths]:
                done.result()
        except BaseException:
            # KeyboardInterrupt lands here, on the main thread; leaving the pool waits for
            # its threads, so they must stop too, or every file would play out first.
            stop.set()
            raise


def format_update(update: Any) -> str | None:
    """A line for the newly committed words: ``[start-end] (rank) words``; None if none."""
    if not update.committed:
        return None
    rank = "base" if update.rank is None else f"r{update.rank}"
    words = " ".join(w.text for w in update.committed)
    return f"[{update.committed[0].start:6.2f}-{update.committed[-1].end:6.2f}] ({rank}) {words}"


def run(args: argparse.Namespace) -> int:
    from flexispeech.audio import audio_duration, iter_audio_blocks
    from flexispeech.errors import ConfigError
    from flexispeech.streaming.file_feed import stream_file_chunks

    if bool(args.audio) == args.mic:
        raise ConfigError("give audio FILEs or --mic (not both)")
    if args.rank is not None and args.adapter is None:
        raise ConfigError("--rank needs an adapter (--adapter DIR)")
    if args.concurrent and args.mic:
        raise ConfigError("--concurrent streams FILEs, not the microphone")
    args.audio_ctx = stream_window(args.audio_ctx, args.adapter)  # a bad value fails before the model loads
    for path in args.audio:
        audio_duration(path)  # a missing or undecodable file fails before the model loads
    online = load_online(args.model, args.adapter, args.rank, args.audio_ctx, args.device)
    several = len(args.audio) > 1

    def emit(path: str | None, stream: Any, update: Any) -> None:
        if args.json:
            event = update.to_dict(stream.committed_text)
            print(json.dumps({"stream": path, **event} if several else event), flush=True)
        elif line := format_update(update):
            print(f"{path}: {line}" if several else line, flush=True)

    if args.mic:
        for update in microphone_updates(online, args.chunk):
            emit(None, online, update)
    elif args.concurrent:
        stream_concurrently(online, args.audio, args.chunk, args.realtime, emit)
    else:
        for path in args.audio:
            online.reset()
            # The file is read block by block (an hour-long recording is never held whole).
            blocks = iter_audio_blocks(path, block_s=max(30.0, args.chunk))
            for update in stream_file_chunks(online, blocks, args.chunk, realtime=args.realtime):
                emit(path, online, update)
    return 0
