"""Complexity signals of an utterance's audio: pure functions of ``samples`` [T] and a rate.

Signals feed the rank router, so they must be cheap (no model) and blind (no clean
reference). Definitions:

* ``duration``: seconds.
* ``snr_db``: estimated ratio of the *active speech* power to the noise power, in dB,
  clipped to [:data:`SNR_MIN_DB`, :data:`SNR_MAX_DB`]. The synthetic corpus mixes noise with
  the same definition (``data_prep``), so estimates and labels are comparable.
* ``speech_activity``: fraction of 25 ms frames that hold speech.

Two blind SNR estimators are here. :func:`percentile_snr_db` (frame energies: the quietest
frames give the noise floor, the frames well above it give speech + noise) is the one
:func:`snr_db` uses: on the synthetic corpus it tracked the mixing SNR better than WADA-SNR
(numbers in ``data_prep/README.md``). :func:`wada_snr_db` (Kim & Stern 2008) is kept for
comparison and for audio without pauses, where a percentile floor sees no silence.
"""

from __future__ import annotations

from collections.abc import Collection
from functools import lru_cache

import numpy as np

SNR_MIN_DB = -10.0  # below this no estimator here is meaningful (and the corpus never goes)
SNR_MAX_DB = 50.0  # clean synthetic speech has digital silence: "infinite" SNR is clipped here
FRAME_S = 0.025  # 25 ms frames, 10 ms hop: the usual speech analysis frame
HOP_S = 0.010
NOISE_PERCENTILE = 10.0  # the quietest 10% of (smoothed) frames are taken as noise only
SMOOTH_FRAMES = 15  # 150 ms moving average: steadies noise power so the margin can be small
ACTIVE_MARGIN_DB = 1.5  # a smoothed frame this far above the noise floor holds speech
DYNAMIC_RANGE_DB = 50.0  # ...and is at most this far below the loudest frame
# (margin and smoothing chosen on white/pink/brown mixtures at 0-30 dB, data_prep/README.md)
_EPS = 1e-12


def duration_s(samples: np.ndarray, sample_rate: int) -> float:
    """Length of ``samples`` [T] in seconds."""
    return float(np.asarray(samples).shape[-1]) / float(sample_rate)


def frame_powers(samples: np.ndarray, sample_rate: int) -> np.ndarray:
    """Mean power of each 25 ms frame (10 ms hop) of ``samples`` [T] -> [n_frames].

    A clip shorter than one frame is one frame.
    """
    x = np.asarray(samples, dtype=np.float64)
    frame = max(1, int(round(FRAME_S * sample_rate)))
    hop = max(1, int(round(HOP_S * sample_rate)))
    if x.size <= frame:
        return np.array([np.mean(x**2) if x.size else 0.0])
    frames = np.lib.stride_tricks.sliding_window_view(x, frame)[::hop]
    return np.mean(frames**2, axis=1)


def _floor_and_active(powers: np.ndarray) -> tuple[float, np.ndarray]:
    """Noise floor power and the boolean mask [n_frames] of speech frames.

    Both come from frame powers smoothed over 150 ms: raw 25 ms powers of noise fluctuate
    by several dB (more for low-frequency noise), which would bias a percentile floor low
    and make quiet speech frames indistinguishable from noise peaks.
    """
    k = min(SMOOTH_FRAMES, powers.size)
    smooth = np.convolve(powers, np.ones(k) / k, mode="same")
    floor = float(np.mean(smooth[smooth <= np.percentile(smooth, NOISE_PERCENTILE)]))
    peak = float(np.max(smooth))
    threshold = max(floor * 10 ** (ACTIVE_MARGIN_DB / 10), peak * 10 ** (-DYNAMIC_RANGE_DB / 10))
    active = smooth > threshold
    if not active.any():  # flat signal: noise only, or speech without any pause
        active = smooth >= np.percentile(smooth, 50.0)
    return floor, active


def percentile_snr_db(samples: np.ndarray, sample_rate: int) -> float:
    """Blind SNR (dB) from frame energies: speech frames vs the quietest frames.

    noise = mean power of the quietest 10% of (150 ms smoothed) frames; speech = mean over
    the speech frames of (frame power - noise); SNR = speech / noise. Assumes some pauses
    (true of read speech); stationary noise is measured best, low-frequency (brown) noise
    is overestimated by a few dB because its power wanders from frame to frame.
    """
    powers = frame_powers(samples, sample_rate)
    floor, active = _floor_and_active(powers)
    speech = float(np.mean(powers[active])) - floor
    if floor <= _EPS:
        return SNR_MAX_DB
    snr = 10.0 * np.log10(max(speech, _EPS) / floor)
    return float(np.clip(snr, SNR_MIN_DB, SNR_MAX_DB))


@lru_cache(maxsize=1)
def _wada_table() -> tuple[np.ndarray, np.ndarray]:
    """WADA's table: SNR (dB) -> G = log E|z| - E log|z| of Gamma(0.4) speech + Gaussian noise.

    Kim & Stern publish this table as constants; we regenerate it by a seeded simulation of
    their model (speech amplitudes Gamma-distributed with shape 0.4, Gaussian noise) so the
    numbers are derived here rather than copied. 200k draws give G to ~3 decimals.
    """
    rng = np.random.default_rng(0)
    n = 200_000
    speech = rng.gamma(0.4, 1.0, n) * rng.choice([-1.0, 1.0], n)
    speech /= np.sqrt(np.mean(speech**2))
    noise = rng.standard_normal(n)
    dbs = np.arange(-20.0, 101.0, 1.0)
    g = np.empty_like(dbs)
    for i, db in enumerate(dbs):
        z = np.abs(speech + noise * 10 ** (-db / 20))
        z = np.maximum(z / z.max(), 1e-10)
        g[i] = np.log(np.mean(z)) - np.mean(np.log(z))
    return dbs, np.maximum.accumulate(g)  # G rises with SNR; keep it monotone for interp


def wada_snr_db(samples: np.ndarray, sample_rate: int) -> float:
    """WADA-SNR (Kim & Stern, Interspeech 2008): blind SNR from the amplitude distribution.

    Measures the whole clip (pauses included), rescaled to active-speech SNR by the
    fraction of speech frames so it is comparable with :func:`percentile_snr_db`.
    """
    x = np.asarray(samples, dtype=np.float64)
    peak = np.max(np.abs(x)) if x.size else 0.0
    if peak <= 0:
        return SNR_MIN_DB
    z = np.maximum(np.abs(x) / peak, 1e-10)
    g = np.log(max(np.mean(z), 1e-10)) - np.mean(np.log(z))
    dbs, table = _wada_table()
    snr_whole = float(np.interp(g, table, dbs))
    # whole-clip SNR -> active-speech SNR: speech power concentrates in the active frames.
    activity = max(speech_activity(samples, sample_rate), 1e-3)
    snr = snr_whole - 10.0 * np.log10(activity)
    return float(np.clip(snr, SNR_MIN_DB, SNR_MAX_DB))


def snr_db(samples: np.ndarray, sample_rate: int) -> float:
    """Blind estimate of the active-speech SNR of ``samples`` [T] in dB (clipped to [-10, 50])."""
    return percentile_snr_db(samples, sample_rate)


def speech_activity(samples: np.ndarray, sample_rate: int) -> float:
    """Fraction (0..1) of 25 ms frames of ``samples`` [T] that hold speech.

    A frame holds speech when its power, smoothed over 150 ms, is 1.5 dB above the noise
    floor (the quietest 10% of frames) and within 50 dB of the loudest frame.
    """
    powers = frame_powers(samples, sample_rate)
    if float(np.max(powers)) <= _EPS:
        return 0.0
    _, active = _floor_and_active(powers)
    return float(np.mean(active))


def audio_signals(
    samples: np.ndarray, sample_rate: int, names: Collection[str] | None = None
) -> dict[str, float]:
    """The audio signals of ``samples`` [T]: keys ``duration``, ``snr_db``,
    ``speech_activity`` (only those in ``names``, when given: a router that reads one of
    them need not pay for the others)."""
    functions = {"duration": duration_s, "snr_db": snr_db, "speech_activity": speech_activity}
    return {name: f(samples, sample_rate) for name, f in functions.items() if names is None or name in names}
