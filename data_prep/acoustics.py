"""Acoustic conditions for synthetic speech: noise at a set SNR, reverberation, telephone band.

All functions are pure: randomness comes in as a ``numpy.random.Generator`` so a corpus
built from the same seed is bit-identical. The SNR is defined on *active speech*: the mean
power of the clean signal's frames that hold speech (within 40 dB of its loudest frame),
so silence padding does not change the SNR a clip is labelled with. The blind estimator
in ``flexispeech.signals.audio`` measures the same quantity.
"""

from __future__ import annotations

import numpy as np
from scipy import signal

from flexispeech.signals.audio import frame_powers

STATIONARY_NOISES = ("white", "pink", "brown")


def active_power(clean: np.ndarray, sample_rate: int) -> float:
    """Mean power of the frames of ``clean`` [T] within 40 dB of its loudest frame."""
    powers = frame_powers(clean, sample_rate)
    active = powers > powers.max() * 1e-4
    return float(np.mean(powers[active])) if active.any() else float(np.mean(clean**2))


def colored_noise(kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """Unit-power noise [n]: ``white`` (flat), ``pink`` (1/f power) or ``brown`` (1/f^2).

    Shaped in the frequency domain (a few lines; no library needed for it).
    """
    white = rng.standard_normal(n)
    if kind == "white":
        noise = white
    else:
        spectrum = np.fft.rfft(white)
        f = np.arange(spectrum.size, dtype=np.float64)
        f[0] = 1.0
        spectrum /= f ** (0.5 if kind == "pink" else 1.0)
        noise = np.fft.irfft(spectrum, n)
    noise = noise - noise.mean()
    return (noise / np.sqrt(np.mean(noise**2) + 1e-20)).astype(np.float32)


def babble(talkers: list[np.ndarray], n: int, rng: np.random.Generator) -> np.ndarray:
    """Unit-power babble [n]: ``talkers`` (each [T_i]) looped, offset at random, summed."""
    out = np.zeros(n, np.float64)
    for speech in talkers:
        speech = speech / np.sqrt(np.mean(speech**2) + 1e-20)
        reps = int(np.ceil((n + speech.size) / speech.size))
        looped = np.tile(speech, reps)
        start = int(rng.integers(0, speech.size))
        out += looped[start : start + n]
    return (out / np.sqrt(np.mean(out**2) + 1e-20)).astype(np.float32)


def mix_at_snr(clean: np.ndarray, noise: np.ndarray, snr_db: float, sample_rate: int) -> np.ndarray:
    """``clean`` [T] + ``noise`` [T] scaled so active-speech power / noise power = ``snr_db``."""
    target = active_power(clean, sample_rate) / 10 ** (snr_db / 10)
    scale = np.sqrt(target / (np.mean(noise.astype(np.float64) ** 2) + 1e-20))
    return (clean + scale * noise).astype(np.float32)


def impulse_response(rt60: float, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """A synthetic room impulse response [L]: a direct path then exponentially decaying noise.

    The decay reaches -60 dB after ``rt60`` seconds (Sabine's definition); early reflections
    start after 3-15 ms. A formula-based response is enough to make speech reverberant
    without simulating a room geometry.
    """
    length = int(rt60 * sample_rate)
    t = np.arange(length) / sample_rate
    tail = rng.standard_normal(length) * 10 ** (-3 * t / rt60)  # -60 dB at t = rt60
    delay = int(rng.uniform(0.003, 0.015) * sample_rate)
    tail[:delay] = 0.0
    h = 0.5 * tail / np.sqrt(np.sum(tail**2) + 1e-20)
    h[0] = 1.0
    return h


def reverberate(clean: np.ndarray, rt60: float, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """``clean`` [T] convolved with :func:`impulse_response` (same length out, peak kept)."""
    wet = signal.fftconvolve(clean, impulse_response(rt60, sample_rate, rng))[: clean.size]
    return (wet * (np.max(np.abs(clean)) / (np.max(np.abs(wet)) + 1e-20))).astype(np.float32)


def telephone(samples: np.ndarray, sample_rate: int) -> np.ndarray:
    """Telephone channel: 300-3400 Hz band-pass (4th-order Butterworth) of ``samples`` [T]."""
    sos = signal.butter(4, [300, 3400], btype="bandpass", fs=sample_rate, output="sos")
    return signal.sosfilt(sos, samples).astype(np.float32)


def pad_silence(
    samples: np.ndarray, sample_rate: int, rng: np.random.Generator, max_s: float = 0.5
) -> np.ndarray:
    """``samples`` [T] with 0.05..``max_s`` s of silence before and after."""
    before, after = (int(rng.uniform(0.05, max_s) * sample_rate) for _ in range(2))
    return np.concatenate([np.zeros(before, np.float32), samples, np.zeros(after, np.float32)])


def set_peak(samples: np.ndarray, peak: float) -> np.ndarray:
    """``samples`` scaled so max |x| = ``peak`` (random levels; never clipping)."""
    return (samples * (peak / (np.max(np.abs(samples)) + 1e-20))).astype(np.float32)
