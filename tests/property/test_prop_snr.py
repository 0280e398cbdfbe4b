"""Property tests of the blind SNR estimator and the audio signals: finite and in range
on any finite input (silence, a constant, a few samples), and falling as noise grows."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from flexispeech.signals.audio import SNR_MAX_DB, SNR_MIN_DB, audio_signals, snr_db, wada_snr_db

PROPERTY = settings(max_examples=40, deadline=None)
SR = 16_000
finite = st.floats(-1.0, 1.0, allow_nan=False, width=32)


@PROPERTY
@given(
    x=st.one_of(
        arrays(np.float32, st.integers(1, 4000), elements=finite),
        st.builds(
            lambda n, c: np.full(n, c, dtype=np.float32), st.integers(1, 4000), finite
        ),  # silence/constant
        arrays(np.float32, st.integers(1, 40), elements=finite),  # shorter than one frame
    ),
    sr=st.sampled_from([8_000, 16_000, 44_100]),
)
def test_signals_are_finite_and_in_range_on_any_finite_input(x: np.ndarray, sr: int) -> None:
    sig = audio_signals(x, sr)
    assert set(sig) == {"duration", "snr_db", "speech_activity"}
    assert all(np.isfinite(v) for v in sig.values())
    assert SNR_MIN_DB <= sig["snr_db"] <= SNR_MAX_DB
    assert SNR_MIN_DB <= wada_snr_db(x, sr) <= SNR_MAX_DB
    assert 0.0 <= sig["speech_activity"] <= 1.0
    assert sig["duration"] == x.size / sr


def speech_like(seed: int, seconds: float = 2.0) -> np.ndarray:
    """Tone bursts (random pitch, 200-400 ms) with pauses between them."""
    rng = np.random.default_rng(seed)
    x = np.zeros(int(seconds * SR), dtype=np.float64)
    t = 0
    while t < x.size:
        n = int(rng.uniform(0.2, 0.4) * SR)
        f = rng.uniform(120, 400)
        seg = np.sin(2 * np.pi * f * np.arange(min(n, x.size - t)) / SR) * rng.uniform(0.2, 0.5)
        x[t : t + seg.size] = seg
        t += n + int(rng.uniform(0.3, 0.6) * SR)
    return x


# True SNRs from 40 dB (nearly clean) down to 0 dB in 5 dB steps: the range the synthetic
# corpus mixes. Below about -3 dB the speech frames no longer stand out of the noise floor
# (the percentile floor takes in speech) and the estimate can wander up by a few tenths of
# a dB: there it says "very noisy", not how noisy, so no order is promised there.
TRUE_SNRS = np.arange(40.0, -0.1, -5.0)


@PROPERTY
@given(seed=st.integers(0, 2**16))
def test_more_noise_never_raises_the_estimate(seed: int) -> None:
    """The same noise, louder: every 5 dB step down in true SNR lowers the estimate,
    strictly (no tolerance), and the estimates span most of the 40 dB of truth."""
    clean = speech_like(seed)
    noise = np.random.default_rng(seed + 1).standard_normal(clean.size)
    power = np.mean(clean[np.abs(clean) > 0] ** 2)
    estimates = [
        snr_db((clean + noise * np.sqrt(power / 10 ** (snr / 10))).astype(np.float32), SR)
        for snr in TRUE_SNRS
    ]
    assert all(b < a for a, b in zip(estimates, estimates[1:])), estimates
    assert estimates[0] - estimates[-1] > 35.0, estimates
