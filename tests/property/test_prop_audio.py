"""Property tests: any sample rate from 8 to 96 kHz and 1-8 channels, in wav or flac,
loads as finite mono float32 at 16 kHz of the right length, whole or block by block."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from flexispeech.audio import SAMPLE_RATE, iter_audio_blocks, load_audio

PROPERTY = settings(max_examples=20, deadline=None)


@PROPERTY
@given(
    # Common rates are drawn often: 16 kHz mono is the no-resampling, no-mixing branch below,
    # which a uniform draw over 8-96 kHz almost never reaches.
    sr=st.one_of(st.sampled_from([8_000, SAMPLE_RATE, 22_050, 44_100, 48_000]), st.integers(8_000, 96_000)),
    channels=st.integers(1, 8),
    seconds=st.floats(0.01, 0.4),
    fmt=st.sampled_from(["wav", "flac"]),
    seed=st.integers(0, 2**16),
)
@example(sr=SAMPLE_RATE, channels=1, seconds=0.2, fmt="wav", seed=1)  # the identity branch, every run
@example(sr=SAMPLE_RATE, channels=1, seconds=0.2, fmt="flac", seed=2)
def test_any_rate_and_channel_count_loads_as_16k_mono(
    sr: int, channels: int, seconds: float, fmt: str, seed: int
) -> None:
    n = max(1, int(seconds * sr))
    x = (np.random.default_rng(seed).uniform(-0.9, 0.9, (n, channels))).astype(np.float32)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"x.{fmt}"
        try:
            sf.write(path, x, sr, subtype="PCM_24" if fmt == "flac" else "FLOAT")
        except sf.LibsndfileError:  # libsndfile's FLAC encoder refuses some rates (65536 Hz)
            assume(False)
        y = load_audio(path)
        blocks = list(iter_audio_blocks(path, block_s=0.05))
    assert y.dtype == np.float32 and y.ndim == 1 and np.all(np.isfinite(y))
    assert abs(y.size - n * SAMPLE_RATE / sr) <= 1
    joined = np.concatenate(blocks)  # the streaming resampler may round the length the other way
    assert abs(joined.size - n * SAMPLE_RATE / sr) <= 1
    m = min(joined.size, y.size)
    np.testing.assert_allclose(joined[:m], y[:m], atol=1e-5)
    if channels == 1 and sr == SAMPLE_RATE:  # no resampling, no mixing: the samples themselves
        np.testing.assert_allclose(y, x[:, 0], atol=1e-6 if fmt == "wav" else 2e-7 * 2**4)
