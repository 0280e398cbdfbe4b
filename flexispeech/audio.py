"""Audio decoding and resampling: soundfile decodes, librosa (soxr) resamples.

torchaudio/torchcodec are deliberately not used: their PyPI builds target CUDA torch and
fail to load beside the CPU wheel, so decoding goes through libsndfile only.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from flexispeech.errors import AudioError

SAMPLE_RATE = 16_000  # Hz; what Whisper and Wav2Vec2 expect


def resample(samples: np.ndarray, orig_sr: int, target_sr: int = SAMPLE_RATE) -> np.ndarray:
    """Resample mono audio ``samples`` [T] from ``orig_sr`` to ``target_sr`` (float32 out)."""
    samples = np.asarray(samples, dtype=np.float32)
    if orig_sr == target_sr:
        return samples
    import librosa  # imported here: librosa's import costs ~1 s and most callers never resample

    return librosa.resample(samples, orig_sr=orig_sr, target_sr=target_sr, res_type="soxr_hq").astype(
        np.float32
    )


def to_mono(samples: np.ndarray) -> np.ndarray:
    """Average the channels of ``samples`` [T, C] (soundfile's layout) into [T]."""
    if samples.ndim == 1:
        return samples
    return samples.mean(axis=1)


def check_samples(samples: np.ndarray, source: object) -> np.ndarray:
    """Reject audio no model can use; ``source`` names it in the error."""
    if samples.size == 0:
        raise AudioError(source, "audio is empty (0 samples)")
    if not np.all(np.isfinite(samples)):
        raise AudioError(source, "audio contains NaN or infinite samples")
    return samples


def load_audio(path: str | Path, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Decode ``path`` (wav, flac, ogg, mp3, ...) to mono float32 at ``sample_rate``.

    Returns:
        samples [T] in [-1, 1] (float32).

    Raises:
        AudioError: the file is missing, cannot be decoded, is empty or not finite.
    """
    import soundfile as sf

    path = Path(path)
    if not path.exists():
        raise AudioError(path, "no such file")
    if path.is_dir():
        raise AudioError(path, "is a directory, not an audio file")
    try:
        samples, sr = sf.read(str(path), dtype="float32", always_2d=False)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as err:
        raise AudioError(path, f"cannot decode audio ({err})") from None
    samples = check_samples(to_mono(np.asarray(samples)), path)
    return resample(samples, sr, sample_rate)
