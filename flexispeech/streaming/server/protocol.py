"""The websocket protocol of ``flexispeech serve``, version 1 (docs/streaming.md has the whole
exchange): the opening message, the limits, and the one error type that ends a stream.

Every way a client can get a stream wrong ends in ``StreamError(code, message)``: the
session sends ``{"type": "error", "code", "message"}`` and closes that connection only.
Messages name the client's input ("the uploaded file", "a microphone message"), never a
path or anything else of the server.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from flexispeech.errors import FlexispeechError

VERSION = 1
SOURCES = ("file", "mic")
MIN_CHUNK_S, MAX_CHUNK_S = 0.1, 10.0
MB = 1024 * 1024


class StreamError(FlexispeechError):
    """Ends one stream with an error event. ``code``: a stable word for programs
    (``bad_request``, ``version``, ``bad_audio``, ``too_large``, ``idle``, ``overflow``,
    ``busy``, ``slow_client``, ``internal``); ``message``: one line for people."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code

    def event(self) -> dict[str, Any]:
        return {"type": "error", "code": self.code, "message": str(self)}


@dataclass(frozen=True)
class Limits:
    """What one server allows; every stream is held to them on its own."""

    max_streams: int = 16  # open streams; one more gets a "busy" error and is closed
    idle_timeout_s: float = 30.0  # a stream that sends nothing this long while it is expected to is closed
    max_upload_bytes: int = 64 * MB  # an uploaded file (one websocket message)
    max_mic_message_bytes: int = 1 * MB  # one microphone message: 16 s of float32 samples
    max_pending_s: float = 30.0  # microphone audio received but not decoded yet (a client sending too fast)
    send_timeout_s: float = 10.0  # an event the client does not take within this long ends its stream
    send_buffer_bytes: int = 256 * 1024  # events a client has not taken yet, held by the server at most

    def __post_init__(self) -> None:
        for name in (
            "max_streams",
            "idle_timeout_s",
            "max_upload_bytes",
            "max_mic_message_bytes",
            "max_pending_s",
            "send_timeout_s",
            "send_buffer_bytes",
        ):
            if not getattr(self, name) > 0:
                raise FlexispeechError(f"serve limits: {name} must be > 0, got {getattr(self, name)}")


@dataclass(frozen=True)
class Start:
    """The opening message, checked: ``{"type": "start", "version": 1, "source": "file" |
    "mic", "chunk": 1.0, "realtime": true, "size": <bytes of the file, optional>}``."""

    source: str
    chunk_s: float
    realtime: bool


def parse_start(text: str, limits: Limits) -> Start:
    """The opening message from its JSON ``text``; ``StreamError`` when it is not one."""
    try:
        request = json.loads(text)
    except ValueError:
        raise StreamError("bad_request", "the opening message is not valid JSON") from None
    if not isinstance(request, dict) or request.get("type") != "start":
        raise StreamError("bad_request", 'the opening message must be a JSON object with "type": "start"')
    version = request.get("version")
    if version != VERSION:
        raise StreamError(
            "version", f"protocol version {version!r} is not supported: this server speaks {VERSION}"
        )
    source = request.get("source")
    if source not in SOURCES:
        raise StreamError("bad_request", f"unknown source {source!r}: expected 'file' or 'mic'")
    chunk = request.get("chunk", 1.0)
    if (
        isinstance(chunk, bool)
        or not isinstance(chunk, (int, float))
        or not MIN_CHUNK_S <= chunk <= MAX_CHUNK_S
    ):
        raise StreamError(
            "bad_request",
            f"chunk must be a number of seconds in [{MIN_CHUNK_S}, {MAX_CHUNK_S}], got {chunk!r}",
        )
    realtime = request.get("realtime", True)
    if not isinstance(realtime, bool):
        raise StreamError("bad_request", f"realtime must be true or false, got {realtime!r}")
    size = request.get("size")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 0):
        raise StreamError("bad_request", f"size must be the file's length in bytes, got {size!r}")
    if size is not None and size > limits.max_upload_bytes:
        raise StreamError(
            "too_large", f"the file is {size} bytes; this server takes at most {limits.max_upload_bytes}"
        )
    return Start(source, float(chunk), realtime)


def mic_samples(data: bytes, limits: Limits) -> Any:
    """The float32 samples [n] of one microphone message; ``StreamError`` if it is not
    whole little-endian float32 samples, or holds a NaN or an infinity."""
    import numpy as np

    if len(data) > limits.max_mic_message_bytes:
        raise StreamError(
            "too_large", f"a microphone message of {len(data)} bytes; at most {limits.max_mic_message_bytes}"
        )
    if len(data) % 4:
        raise StreamError(
            "bad_audio",
            f"a microphone message of {len(data)} bytes is not whole float32 samples (4 bytes each)",
        )
    samples = np.frombuffer(data, dtype="<f4").astype(np.float32)
    if samples.size and not math.isfinite(float(np.abs(samples).max())):
        raise StreamError("bad_audio", "a microphone message holds NaN or infinite samples")
    return samples
