"""Audio signals: duration, blind SNR estimate, speech activity."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

import flexispeech.signals as signals
from flexispeech.signals.audio import (
    SNR_MAX_DB,
    audio_signals,
    duration_s,
    percentile_snr_db,
    speech_activity,
    wada_snr_db,
)

SR = 16_000
TOLERANCE_DB = 3.0  # white noise, 0..30 dB: the percentile estimator's worst case measured here


@pytest.fixture(scope="module")
def clean() -> np.ndarray:
    """A clean synthesized utterance with pauses (espeak-ng), padded with silence."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("needs espeak-ng")
    from data_prep.tts import Synthesizer, Voice

    synth = Synthesizer()
    try:
        speech = synth(Voice("espeak", "en-us+m3"), "The train to Boston leaves at seven. Please be on time.")
    finally:
        synth.close()
    pad = np.zeros(SR // 4, np.float32)
    return np.concatenate([pad, speech, pad])


def test_duration() -> None:
    assert duration_s(np.zeros(24_000), SR) == 1.5
    assert signals.duration_s(np.zeros(8000), 8000) == 1.0


@pytest.mark.parametrize("snr", [0.0, 10.0, 20.0, 30.0])
def test_snr_estimate_within_tolerance_white_noise(clean: np.ndarray, snr: float) -> None:
    from data_prep.acoustics import colored_noise, mix_at_snr

    noisy = mix_at_snr(clean, colored_noise("white", clean.size, np.random.default_rng(1)), snr, SR)
    estimate = signals.snr_db(noisy, SR)
    assert abs(estimate - snr) < TOLERANCE_DB, (snr, estimate)
    assert estimate == percentile_snr_db(noisy, SR)


def test_snr_orders_noise_levels_and_clean_is_max(clean: np.ndarray) -> None:
    from data_prep.acoustics import colored_noise, mix_at_snr

    noise = colored_noise("pink", clean.size, np.random.default_rng(2))
    estimates = [wada_snr_db(mix_at_snr(clean, noise, s, SR), SR) for s in (0, 10, 20)]
    assert estimates[0] < estimates[1] < estimates[2]
    assert percentile_snr_db(clean, SR) == SNR_MAX_DB


def test_speech_activity(clean: np.ndarray) -> None:
    activity = speech_activity(clean, SR)
    assert 0.4 < activity < 0.95  # speech with pauses and padding
    assert speech_activity(np.zeros(SR), SR) == 0.0
    doubled_pad = np.concatenate([np.zeros(clean.size, np.float32), clean])
    assert speech_activity(doubled_pad, SR) == pytest.approx(activity / 2, abs=0.03)


def test_audio_signals_keys(clean: np.ndarray) -> None:
    sig = audio_signals(clean, SR)
    assert set(sig) == {"duration", "snr_db", "speech_activity"}
    assert sig["duration"] == pytest.approx(clean.size / SR)
    assert all(isinstance(v, float) for v in sig.values())
