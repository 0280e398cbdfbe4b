"""Fuzzing the audio decode path: random bytes and mutated real wav/flac/ogg files fed to
``load_audio`` and ``iter_audio_blocks``. Every outcome is finite mono float32 samples or an
``AudioError`` naming the file: never another exception, never a hang. Seeded, a few
hundred cases, a few seconds."""

from __future__ import annotations

import faulthandler
import random
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from flexispeech.audio import iter_audio_blocks, load_audio
from flexispeech.errors import AudioError

SEED = 20240611
CASES_PER_SOURCE = 90
RANDOM_CASES = 60
MAGICS = [
    b"",
    b"RIFF",
    b"RIFF\x24\x00\x00\x00WAVEfmt ",
    b"fLaC",
    b"OggS\x00\x02",
    b"FORM",
    b"ID3",
    b"\xff\xfb",
]


def mutate(data: bytes, rng: random.Random) -> bytes:
    """One of: bit flips, a random overwrite (often in the header), truncation, a
    duplicated or deleted span, or a 32-bit header field set to an extreme value."""
    b = bytearray(data)
    kind = rng.randrange(6)
    if kind == 0:
        for _ in range(rng.randint(1, 30)):
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
    elif kind == 1:
        start = rng.randrange(min(len(b), 128)) if rng.random() < 0.6 else rng.randrange(len(b))
        n = rng.randint(1, 16)
        b[start : start + n] = bytes(rng.randrange(256) for _ in range(n))
    elif kind == 2:
        b = b[: rng.randrange(len(b))]
    elif kind == 3:
        i, j = sorted(rng.randrange(len(b)) for _ in range(2))
        b = b[:j] + b[i:j] + b[j:]
    elif kind == 4:
        i, j = sorted(rng.randrange(len(b)) for _ in range(2))
        del b[i:j]
    else:
        i = rng.randrange(0, min(len(b), 64) - 4)
        b[i : i + 4] = rng.choice(
            [b"\x00\x00\x00\x00", b"\xff\xff\xff\xff", b"\xff\xff\xff\x7f", b"\x01\x00\x00\x00"]
        )
    return bytes(b)


@pytest.fixture(scope="module")
def sources(assets_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """The bytes of short real files: 16 kHz wav, 48 kHz stereo flac, an ogg/vorbis."""
    fox, sr = sf.read(assets_dir / "fox.wav", dtype="float32")
    ogg = tmp_path_factory.mktemp("ogg") / "fox.ogg"
    sf.write(ogg, fox[: sr // 2], sr, format="OGG", subtype="VORBIS")
    flac, flac_sr = sf.read(assets_dir / "fox_48k_stereo.flac", dtype="float32")
    short_flac = tmp_path_factory.mktemp("flac") / "fox.flac"
    sf.write(short_flac, flac[: flac_sr // 2], flac_sr)
    short_wav = tmp_path_factory.mktemp("wav") / "fox.wav"
    sf.write(short_wav, fox[: sr // 2], sr, subtype="PCM_16")
    return {"wav": short_wav.read_bytes(), "flac": short_flac.read_bytes(), "ogg": ogg.read_bytes()}


def check_outcome(path: Path, decode) -> str | None:
    """None when ``decode(path)`` gives clean samples or a clean AudioError; else what went wrong."""
    try:
        y = decode(path)
    except AudioError as err:
        return None if str(path) in str(err) else f"AudioError without the path: {err}"
    except Exception as err:  # noqa: BLE001 - the point of the fuzz: nothing else may escape
        return f"{type(err).__name__}: {err}"
    if not (isinstance(y, np.ndarray) and y.dtype == np.float32 and y.ndim == 1 and y.size > 0):
        return f"bad samples {type(y)} {getattr(y, 'shape', None)} {getattr(y, 'dtype', None)}"
    if not np.all(np.isfinite(y)):
        return "non-finite samples returned"
    return None


def blocks(path: Path) -> np.ndarray:
    return np.concatenate(list(iter_audio_blocks(path, block_s=0.1)))


def test_fuzz_the_decode_path(sources: dict[str, bytes], tmp_path: Path) -> None:
    rng = random.Random(SEED)
    cases: list[tuple[str, bytes]] = []
    for n in range(RANDOM_CASES):
        head = rng.choice(MAGICS)
        cases.append(
            (
                f"random{n}.{rng.choice(['wav', 'flac', 'ogg', 'bin'])}",
                head + bytes(rng.randrange(256) for _ in range(rng.randrange(0, 2048))),
            )
        )
    for ext, data in sources.items():
        for n in range(CASES_PER_SOURCE):
            mutated = data
            for _ in range(rng.choice([1, 1, 2, 3])):
                mutated = mutate(mutated, rng) if mutated else mutated
            cases.append((f"mut{n}.{ext}", mutated))
    faulthandler.dump_traceback_later(120, exit=True)  # a hang in the C decoder ends the run loudly
    failures, started = [], time.perf_counter()
    try:
        for name, data in cases:
            path = tmp_path / name
            path.write_bytes(data)
            for decode in (load_audio, blocks):
                problem = check_outcome(path, decode)
                if problem:
                    failures.append(f"{name} ({decode.__name__}): {problem}")
            path.unlink()
    finally:
        faulthandler.cancel_dump_traceback_later()
    elapsed = time.perf_counter() - started
    assert not failures, "\n".join(failures[:20])
    assert len(cases) == RANDOM_CASES + 3 * CASES_PER_SOURCE
    assert elapsed < 60, f"fuzz run took {elapsed:.1f} s"


def test_mutations_still_decode_sometimes(sources: dict[str, bytes], tmp_path: Path) -> None:
    """The fuzz is not vacuous: some mutated files still decode (to finite samples)."""
    rng = random.Random(SEED + 1)
    decoded = 0
    for n in range(40):
        path = tmp_path / f"m{n}.wav"
        b = bytearray(sources["wav"])
        for _ in range(5):  # flips in the sample data only: the header stays valid
            b[rng.randrange(100, len(b))] ^= 1 << rng.randrange(8)
        path.write_bytes(bytes(b))
        y = load_audio(path)
        decoded += int(np.all(np.isfinite(y)) and y.size > 0)
    assert decoded == 40
