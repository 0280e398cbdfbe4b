"""``flexispeech serve``: a local web page that transcribes a file or the microphone live."""

from __future__ import annotations

import argparse
import sys

from flexispeech.commands.options import positive_float, whole_number
from flexispeech.models.whisper import DEFAULT_SOURCE

HELP = "serve a local web page that streams a file or the microphone through Whisper, live"


# A TCP port (0: one the system picks); one outside would fail only once the model had
# loaded, with an OverflowError from bind.
port_number = whole_number(0, 65535, "a port 0-65535")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=port_number, default=8000, help="TCP port, 0-65535 (default 8000)")
    parser.add_argument(
        "--model", default=DEFAULT_SOURCE, help=f"Whisper model name or directory (default {DEFAULT_SOURCE})"
    )
    parser.add_argument(
        "--adapter", metavar="DIR", help="a saved Flexi-LoRA adapter; its router picks each update's rank"
    )
    parser.add_argument("--rank", type=int, help="serve every update at this adapter rank instead of routing")
    parser.add_argument(
        "--audio-ctx",
        default="auto",
        metavar="N",
        help="encoder window in 20-ms positions, or 'auto' (default)",
    )
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    limits = parser.add_argument_group("limits (each stream is held to them on its own)")
    limits.add_argument(
        "--max-streams",
        type=int,
        default=16,
        metavar="N",
        help="open streams at most; one more gets a 'busy' error event (default 16)",
    )
    limits.add_argument(
        "--idle-timeout",
        type=positive_float,
        default=30.0,
        metavar="S",
        help="close a stream that sends nothing for S seconds while audio is expected (default 30)",
    )
    limits.add_argument(
        "--max-pending",
        type=positive_float,
        default=30.0,
        metavar="S",
        help="microphone audio a stream may have waiting to be decoded (default 30 s)",
    )
    limits.add_argument(
        "--max-upload-mb",
        type=positive_float,
        default=64.0,
        metavar="MB",
        help="largest uploaded file (default 64 MiB)",
    )


def run(args: argparse.Namespace) -> int:
    from flexispeech.commands.stream import load_online
    from flexispeech.errors import ConfigError
    from flexispeech.models.family import check_device

    if args.rank is not None and args.adapter is None:
        raise ConfigError("--rank needs an adapter (--adapter DIR)")
    try:
        from flexispeech.streaming.server.app import check_listen, serve
    except ImportError as err:
        raise ConfigError(
            f"flexispeech serve needs aiohttp (pip install 'flexispeech[serve]'): {err}"
        ) from None
    from flexispeech.streaming.server.protocol import MB, Limits

    if args.max_streams < 1:  # the float limits are checked by argparse (positive_float)
        raise ConfigError(f"--max-streams must be > 0, got {args.max_streams}")
    limits = Limits(
        max_streams=args.max_streams,
        idle_timeout_s=args.idle_timeout,
        max_pending_s=args.max_pending,
        max_upload_bytes=int(args.max_upload_mb * MB),
    )
    check_device(args.device)  # the cheap checks first: each would fail only after the model loaded
    check_listen(args.host, args.port)
    online = load_online(args.model, args.adapter, args.rank, args.audio_ctx, args.device)
    print(
        f"flexispeech serve: open http://{args.host}:{args.port}/ (Ctrl-C to stop)",
        file=sys.stderr,
        flush=True,
    )
    serve(online.t, host=args.host, port=args.port, options=online.options, limits=limits)
    return 0
