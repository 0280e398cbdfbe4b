"""Whisper's log-mel of a batch of waveforms that is already on the training device.

transformers' ``WhisperFeatureExtractor`` takes host arrays: with ``device="cuda"`` it pads
the clips with numpy, copies the batch to the GPU for the STFT and copies the features
back to the host, and the training step then copies them to the GPU again. For a batch
of 32 clips of 30 s that is ~180 MB through pageable host memory every step, in the
training process, between steps. Augmented audio is made on the GPU, so here the same
computation (``_torch_extract_fbank_features``: Hann-window STFT, power spectrum, the
extractor's own mel filters, log10, an 8-decade floor per clip, ``(x + 4) / 4``) runs on
the tensor where it is; the tests hold it to the extractor's output.
"""

from __future__ import annotations

from typing import Any

import torch

from flexispeech.host_copy import to_device


def device_log_mel_supported(feature_extractor: Any) -> bool:
    """Whether ``log_mel`` reproduces this extractor (Whisper's, without normalisation)."""
    return (
        hasattr(feature_extractor, "mel_filters")
        and hasattr(feature_extractor, "n_samples")
        and not getattr(feature_extractor, "do_normalize", False)
    )


def log_mel(feature_extractor: Any, audio: torch.Tensor) -> torch.Tensor:
    """Log-mel features [B, n_mels, frames] float32 of ``audio`` [B, T] on its device.

    ``audio`` is cut or zero-padded to the extractor's window (``n_samples``: 30 s, or the
    ``audio_ctx`` window ``set_feature_window`` gave it), as the extractor pads each clip.
    """
    fe = feature_extractor
    window = int(fe.n_samples)
    audio = audio.to(torch.float32)
    if audio.shape[1] >= window:
        audio = audio[:, :window]
    else:
        audio = torch.nn.functional.pad(audio, (0, window - audio.shape[1]))
    if getattr(fe, "dither", 0.0):
        audio = audio + fe.dither * torch.randn_like(audio)
    hann = torch.hann_window(fe.n_fft, device=audio.device)
    stft = torch.stft(audio, fe.n_fft, fe.hop_length, window=hann, return_complex=True)
    power = (stft[..., :-1].abs() ** 2).contiguous()  # [B, n_fft/2+1, frames]
    # through pinned memory: a plain host-to-device copy would wait for the work queued before it
    filters = to_device(torch.as_tensor(fe.mel_filters, dtype=torch.float32), audio.device)  # [freqs, mels]
    log_spec = torch.clamp(filters.T @ power, min=1e-10).log10()
    floor = log_spec.amax(dim=(1, 2), keepdim=True) - 8.0  # per clip: 8 decades below its peak
    return (torch.maximum(log_spec, floor) + 4.0) / 4.0
