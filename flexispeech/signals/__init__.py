"""Complexity signals the rank router reads: audio (here), text and the perplexity proxy.

Only the audio signals are re-exported: they are pure numpy, so ``import
flexispeech.signals`` stays light (``flexispeech.signals.proxy`` needs a model).
"""

from flexispeech.signals.audio import (
    audio_signals,
    duration_s,
    percentile_snr_db,
    snr_db,
    speech_activity,
    wada_snr_db,
)

__all__ = [
    "audio_signals",
    "duration_s",
    "percentile_snr_db",
    "snr_db",
    "speech_activity",
    "wada_snr_db",
]
