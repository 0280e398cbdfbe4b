"""Audio decoding and resampling: soundfile decodes, librosa (soxr) resamples.

torchaudio/torchcodec are deliberately not used: their PyPI builds target CUDA torch and
fail to load beside the CPU wheel, so decoding goes through libsndfile only.
"""

from __future__ import annotations

from collections.abc import Iterator
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


MIN_RATE, MAX_RATE = 1_000, 768_000  # Hz; outside this a header is corrupt (or the file is not speech)
READ_FRAMES = 1 << 20  # frames per read: memory follows the audio actually decoded, never a header's claim
_DECODE_ERRORS = (RuntimeError, TypeError, ValueError, OSError, EOFError)  # + soundfile's LibsndfileError


def _checked_path(path: str | Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise AudioError(path, "no such file")
    if path.is_dir():
        raise AudioError(path, "is a directory, not an audio file")
    return path


def _open(path: Path):  # -> soundfile.SoundFile
    """Open ``path`` for decoding; an ``AudioError`` naming it for anything undecodable."""
    import soundfile as sf

    try:
        f = sf.SoundFile(str(path))
    except (sf.LibsndfileError, *_DECODE_ERRORS) as err:
        raise AudioError(path, f"cannot decode audio ({err})") from None
    if not MIN_RATE <= f.samplerate <= MAX_RATE or f.channels < 1:
        f.close()
        raise AudioError(
            path, f"unsupported sample rate {f.samplerate} Hz or {f.channels} channels (corrupt header?)"
        )
    return f


def _read_mono(f, path: Path, frames: int) -> np.ndarray:
    """Up to ``frames`` frames of open file ``f`` as mono float32 [<=frames]."""
    import soundfile as sf

    try:
        block = f.read(frames, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, *_DECODE_ERRORS) as err:
        raise AudioError(path, f"cannot decode audio ({err})") from None
    return to_mono(block)


def audio_duration(path: str | Path) -> float:
    """Seconds of audio in ``path``, from its header (nothing is decoded)."""
    path = _checked_path(path)
    with _open(path) as f:
        return f.frames / f.samplerate


def iter_audio_blocks(
    path: str | Path, block_s: float = 30.0, sample_rate: int = SAMPLE_RATE
) -> Iterator[np.ndarray]:
    """Decode ``path`` block by block: mono float32 blocks [~block_s * sample_rate].

    Memory stays at one block however long the file is (an hour-long recording is never
    held whole). Resampling goes through soxr's streaming resampler, which carries its
    filter state from block to block, so the concatenated blocks equal a one-shot
    resampling up to float rounding (no edge effects at block boundaries; the length may
    differ from ``load_audio``'s by one sample).

    Raises:
        AudioError: the file is missing, cannot be decoded, is empty or holds NaN/inf
            samples (a bad block is found when it is reached: blocks before it were yielded).
    """
    import soxr

    path = _checked_path(path)
    if block_s <= 0:
        raise ValueError(f"block_s must be > 0, got {block_s}")
    with _open(path) as f:
        sr = f.samplerate
        stream = (
            None
            if sr == sample_rate
            else soxr.ResampleStream(sr, sample_rate, 1, dtype="float32", quality="HQ")
        )
        frames = max(1, int(round(block_s * sr)))
        total = 0
        while True:
            mono = _read_mono(f, path, frames)
            last = mono.size < frames
            if mono.size and not np.all(np.isfinite(mono)):
                raise AudioError(path, "audio contains NaN or infinite samples")
            total += mono.size
            out = mono if stream is None else stream.resample_chunk(mono, last=last)
            if out.size:
                yield np.ascontiguousarray(out, dtype=np.float32)
            if last:
                break
    if total == 0:
        raise AudioError(path, "audio is empty (0 samples)")


def load_audio(path: str | Path, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Decode ``path`` (wav, flac, ogg, mp3, ...) to mono float32 at ``sample_rate``.

    The file is read in pieces, so a corrupt header that claims more frames than the file
    holds costs nothing; a file longer than a few minutes is better read with
    ``iter_audio_blocks``.

    Returns:
        samples [T] in [-1, 1] (float32).

    Raises:
        AudioError: the file is missing, cannot be decoded, is empty or not finite.
    """
    path = _checked_path(path)
    with _open(path) as f:
        sr, pieces = f.samplerate, []
        while True:
            piece = _read_mono(f, path, READ_FRAMES)
            pieces.append(piece)
            if piece.size < READ_FRAMES:
                break
    samples = check_samples(np.concatenate(pieces), path)
    return resample(samples, sr, sample_rate)
