"""On-the-fly speech augmentation for training: the config and the two calls a training loop makes.

``augment_waveforms`` (speed perturbation, reverberation, additive noise at a sampled
SNR, a telephone line) runs on padded waveforms before feature extraction;
``spec_augment`` (time warp, frequency and time masks) on log-mel features after it.
Both run on the batch's device, draw every random number from the ``torch.Generator``
they are given (same generator state -> the same augmented batch; ``step_generator``
makes one per training step) and are the identity, bit for bit, when their part of the
config is off.

The ops live in ``augment_waveform`` and ``augment_spectrogram``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from flexispeech.audio import SAMPLE_RATE, load_audio
from flexispeech.data.augment_spectrogram import spec_augment_masks, time_warp
from flexispeech.data.augment_waveform import (
    BACKENDS,
    NOISE_COLOURS,
    add_noise_at_snr,
    babble,
    choose,
    colored_noise,
    random_clips,
    reverberate,
    speed_perturb,
    synthetic_rirs,
    telephone_channel,
    torchaudio_ops,
    uniform,
    valid_mask,
)
from flexispeech.errors import ConfigError
from flexispeech.host_copy import to_device

NOISE_TYPES = (*NOISE_COLOURS, "bank", "babble")
RIR_SOURCES = ("synthetic", "bank")
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3")


@dataclass(frozen=True)
class AugmentConfig:
    """What augmentation a training run applies; everything is off by default."""

    backend: str = "auto"
    """auto (torchaudio's resample and FFT convolution where torchaudio loads, plain torch
    elsewhere) | torch (always plain torch) | torchaudio (fail if it does not load)."""
    spec_augment: bool = False
    """SpecAugment on the log-mel features (Whisper; Wav2Vec2 masks inside the model)."""
    spec_augment_prob: float = 0.9
    """Probability that an utterance gets SpecAugment (lhotse/icefall: 0.9)."""
    num_freq_masks: int = 2
    """Frequency masks per utterance (Park et al. LibriSpeech policy; icefall: 2)."""
    freq_mask_width: int = 27
    """Widest frequency mask in mel bins, F (icefall: 27 of 80 bins)."""
    num_time_masks: int = 10
    """Most time masks per utterance (icefall: 10; fewer on short utterances, see below)."""
    time_mask_width: int = 100
    """Widest time mask in frames, T (icefall: 100 frames = 1 s at 10 ms)."""
    max_time_mask_fraction: float = 0.15
    """Time masks cover at most this fraction of an utterance's frames (icefall: 0.15)."""
    time_warp: int = 0
    """Largest time-warp shift in frames, W (0 = off; Park et al. and icefall use 80)."""
    noise_prob: float = 0.0
    """Probability that an utterance gets additive noise (0 = off)."""
    snr_db: list[float] = field(default_factory=lambda: [5.0, 20.0])
    """[low, high]: the SNR in dB is drawn uniformly from this range, per utterance."""
    noise_types: list[str] = field(default_factory=lambda: ["white", "pink", "brown"])
    """Noise sources drawn from uniformly: white, pink, brown (generated), bank (clips
    from ``noise_dir``), babble (other utterances of the same batch)."""
    noise_dir: str | None = None
    """Directory of noise clips (wav/flac/ogg/mp3, searched recursively) for ``bank``."""
    babble_talkers: int = 3
    """Utterances summed into one babble noise."""
    speed_prob: float = 0.0
    """Probability that an utterance is speed-perturbed (0 = off)."""
    speed_factors: list[float] = field(default_factory=lambda: [0.9, 1.0, 1.1])
    """Speed factors drawn from uniformly (Kaldi/ESPnet's 3-way perturbation); 1.1 shortens
    an utterance to 1/1.1 of its length and raises its pitch by 10 %."""
    reverb_prob: float = 0.0
    """Probability that an utterance is reverberated (0 = off)."""
    rt60: list[float] = field(default_factory=lambda: [0.2, 0.8])
    """[low, high] seconds: the reverberation time of synthetic RIRs, drawn uniformly."""
    rir_sources: list[str] = field(default_factory=lambda: ["synthetic"])
    """Impulse responses drawn from uniformly: synthetic (decaying noise), bank (``rir_dir``)."""
    rir_dir: str | None = None
    """Directory of measured impulse responses (audio files) for ``bank``."""
    telephone_prob: float = 0.0
    """Probability that an utterance passes through a narrowband telephone line (8 kHz,
    300-3400 Hz, G.711 mu-law; ``augment_waveform.telephone_channel``), after the noise."""

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ConfigError(f"augment.backend: expected one of {list(BACKENDS)}, got {self.backend!r}")
        probs = (
            "spec_augment_prob",
            "noise_prob",
            "speed_prob",
            "reverb_prob",
            "telephone_prob",
            "max_time_mask_fraction",
        )
        for name in probs:
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"augment.{name}: expected a probability in [0, 1], got {value!r}")
        for name in ("num_freq_masks", "freq_mask_width", "num_time_masks", "time_mask_width", "time_warp"):
            if getattr(self, name) < 0:
                raise ConfigError(f"augment.{name}: expected >= 0, got {getattr(self, name)!r}")
        for name, low in (("snr_db", -float("inf")), ("rt60", 0.0)):
            value = getattr(self, name)
            if len(value) != 2 or not low < value[0] <= value[1]:
                raise ConfigError(f"augment.{name}: expected [low, high], {low} < low <= high, got {value!r}")
        _check_choices("noise_types", self.noise_types, NOISE_TYPES)
        _check_choices("rir_sources", self.rir_sources, RIR_SOURCES)
        if not self.speed_factors or min(self.speed_factors) <= 0:
            raise ConfigError(f"augment.speed_factors: expected positive factors, got {self.speed_factors!r}")
        if self.babble_talkers < 1:
            raise ConfigError(f"augment.babble_talkers: expected >= 1, got {self.babble_talkers!r}")

    @property
    def waveform_ops(self) -> bool:
        """Whether ``augment_waveforms`` changes anything."""
        return self.noise_prob > 0 or self.speed_prob > 0 or self.reverb_prob > 0 or self.telephone_prob > 0


def _check_choices(name: str, values: list[str], allowed: tuple[str, ...]) -> None:
    if not values or any(v not in allowed for v in values):
        raise ConfigError(f"augment.{name}: expected a non-empty list from {list(allowed)}, got {values!r}")


@dataclass
class ClipBank:
    """Audio clips as one zero-padded tensor: ``clips`` [N, T_max] and ``lengths`` [N]."""

    clips: torch.Tensor
    lengths: torch.Tensor

    @classmethod
    def from_arrays(cls, arrays: Sequence[np.ndarray | torch.Tensor]) -> ClipBank:
        """A bank of 1-D clips (float, any length >= 1)."""
        clips, lengths = pad_waveforms(arrays)
        return cls(clips, lengths)

    @classmethod
    def from_dir(cls, path: str | Path, sample_rate: int = SAMPLE_RATE) -> ClipBank:
        """Every audio file under ``path`` (recursively, sorted), decoded at ``sample_rate``."""
        files = sorted(p for p in Path(path).rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES)
        if not files:
            raise ConfigError(f"{path}: no audio files ({', '.join(AUDIO_SUFFIXES)}) for an augment bank")
        return cls.from_arrays([load_audio(p, sample_rate) for p in files])

    def to(self, device: torch.device | str) -> ClipBank:
        return ClipBank(self.clips.to(device), self.lengths.to(device))


@dataclass
class AugmentBanks:
    """The clip banks a config's ``bank`` sources read (None where not used)."""

    noise: ClipBank | None = None
    rirs: ClipBank | None = None

    @classmethod
    def load(
        cls, cfg: AugmentConfig, sample_rate: int = SAMPLE_RATE, device: torch.device | str = "cpu"
    ) -> AugmentBanks:
        """Decode ``cfg.noise_dir`` / ``cfg.rir_dir`` once, for a whole run."""
        noise = rirs = None
        if cfg.noise_prob > 0 and "bank" in cfg.noise_types:
            if cfg.noise_dir is None:
                raise ConfigError("augment.noise_types has 'bank' but augment.noise_dir is not set")
            noise = ClipBank.from_dir(cfg.noise_dir, sample_rate).to(device)
        if cfg.reverb_prob > 0 and "bank" in cfg.rir_sources:
            if cfg.rir_dir is None:
                raise ConfigError("augment.rir_sources has 'bank' but augment.rir_dir is not set")
            rirs = ClipBank.from_dir(cfg.rir_dir, sample_rate).to(device)
        return cls(noise, rirs)


def step_generator(seed: int, step: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator on ``device`` seeded from (seed, step): every step draws differently, and a
    resumed run redraws a step exactly. (CPU and CUDA generators draw different numbers
    from the same seed, so a replay must use the same kind of device.)"""
    state = np.random.SeedSequence([seed, step]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator(device=device).manual_seed(int(state))


def pad_waveforms(arrays: Sequence[np.ndarray | torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """1-D waveforms -> (audio [batch, T_max] float32 zero-padded, lengths [batch] long)."""
    rows = [torch.as_tensor(np.asarray(a, dtype=np.float32)) for a in arrays]
    lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)
    return torch.nn.utils.rnn.pad_sequence(rows, batch_first=True), lengths


def unpad_waveforms(audio: torch.Tensor, lengths: torch.Tensor) -> list[np.ndarray]:
    """The inverse of ``pad_waveforms``: float32 arrays [length] on the host."""
    return [row[:n].numpy() for row, n in zip(audio.float().cpu(), lengths.tolist())]


def augment_waveforms(
    audio: torch.Tensor,
    lengths: torch.Tensor,
    cfg: AugmentConfig,
    generator: torch.Generator,
    sample_rate: int = SAMPLE_RATE,
    banks: AugmentBanks | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Speed perturbation, then reverberation, then additive noise, then a telephone line,
    each per utterance with its probability (a room reverberates the talker, not the noise
    added after it; the line carries both).

    Args:
        audio: [batch, T] float waveforms at ``sample_rate``, zero past ``lengths``.
        lengths: [batch] long, valid samples per row.
        cfg: the run's augmentation config.
        generator: a ``torch.Generator`` on ``audio.device`` (see ``step_generator``).
        banks: noise/RIR clips for the ``bank`` sources (``AugmentBanks.load``), on the device.

    Returns:
        (audio [batch, T'], lengths [batch]): T' = T unless speed perturbation is on (then
        the widest a factor could make it); the padding stays zero. With every probability
        0 the inputs are returned as they are.
    """
    if not cfg.waveform_ops:
        return audio, lengths
    batch, device = audio.shape[0], audio.device
    banks = banks or AugmentBanks()
    torchaudio_ops(cfg.backend)  # fail early on backend 'torchaudio' without torchaudio
    if cfg.speed_prob > 0:
        factor = choose(generator, batch, len(cfg.speed_factors), device)
        skip = torch.rand(batch, generator=generator, device=device) >= cfg.speed_prob
        # a skipped row takes an out-of-range choice, which no factor matches
        factor = torch.where(skip, len(cfg.speed_factors), factor)
        audio, lengths = speed_perturb(audio, lengths, factor, cfg.speed_factors, sample_rate, cfg.backend)
    if cfg.reverb_prob > 0:
        rirs = _draw_rirs(cfg, banks, batch, sample_rate, generator, audio)
        wet = reverberate(audio, lengths, rirs, cfg.backend)
        apply = torch.rand(batch, generator=generator, device=device) < cfg.reverb_prob
        audio = torch.where(apply[:, None], wet, audio)
    if cfg.noise_prob > 0:
        noise = _draw_noise(cfg, banks, audio, lengths, generator)
        snr = uniform(generator, batch, cfg.snr_db[0], cfg.snr_db[1], device).to(audio.dtype)
        noisy = add_noise_at_snr(audio, lengths, noise, snr)
        apply = torch.rand(batch, generator=generator, device=device) < cfg.noise_prob
        audio = torch.where(apply[:, None], noisy, audio)
    if cfg.telephone_prob > 0:
        phone = telephone_channel(audio, lengths, sample_rate, cfg.backend)
        apply = torch.rand(batch, generator=generator, device=device) < cfg.telephone_prob
        audio = torch.where(apply[:, None], phone, audio)
    return audio, lengths


def _draw_noise(
    cfg: AugmentConfig,
    banks: AugmentBanks,
    audio: torch.Tensor,
    lengths: torch.Tensor,
    generator: torch.Generator,
) -> torch.Tensor:
    """[batch, T] noise, each row from a source drawn uniformly from ``cfg.noise_types``."""
    batch, width = audio.shape
    kind = choose(generator, batch, len(cfg.noise_types), audio.device)
    colours = [NOISE_COLOURS[t] for t in cfg.noise_types if t in NOISE_COLOURS]
    # host lists reach the device through pinned memory: a plain copy would wait for the
    # previous training step to finish (host_copy)
    exponents = to_device(torch.tensor(colours or [0.0], dtype=audio.dtype), audio.device)
    # every row draws a colour too (unused when its source is not a colour) so that the
    # draws do not depend on which source each row took
    colour = exponents[choose(generator, batch, len(exponents), audio.device)]
    out = torch.zeros_like(audio)
    for k, name in enumerate(cfg.noise_types):
        if name in NOISE_COLOURS:
            continue
        if name == "bank":
            if banks.noise is None:
                raise ConfigError("augment.noise_types has 'bank' but no noise bank was given (AugmentBanks)")
            source = random_clips(banks.noise.clips, banks.noise.lengths, batch, width, generator)
        else:
            source = babble(audio, lengths, cfg.babble_talkers, generator)
        out = torch.where((kind == k)[:, None], source.to(audio.dtype), out)
    if colours:
        coloured = colored_noise(colour, width, generator)
        is_colour = to_device(torch.tensor([t in NOISE_COLOURS for t in cfg.noise_types]), audio.device)[kind]
        out = torch.where(is_colour[:, None], coloured, out)
    return out


def _draw_rirs(
    cfg: AugmentConfig,
    banks: AugmentBanks,
    batch: int,
    sample_rate: int,
    generator: torch.Generator,
    audio: torch.Tensor,
) -> torch.Tensor:
    """[batch, K] impulse responses, each row from a source drawn from ``cfg.rir_sources``."""
    device, dtype = audio.device, audio.dtype
    taps = int(np.ceil(cfg.rt60[1] * sample_rate))  # the longest synthetic decay fits
    if banks.rirs is not None:
        taps = max(taps, banks.rirs.clips.shape[1])
    rt60 = uniform(generator, batch, cfg.rt60[0], cfg.rt60[1], device).to(dtype)
    out = synthetic_rirs(rt60, taps, sample_rate, generator)
    if "bank" in cfg.rir_sources:
        if banks.rirs is None:
            raise ConfigError("augment.rir_sources has 'bank' but no RIR bank was loaded (AugmentBanks.load)")
        kind = choose(generator, batch, len(cfg.rir_sources), device)
        index = choose(generator, batch, banks.rirs.clips.shape[0], device)
        measured = banks.rirs.clips[index].to(dtype)
        measured = torch.nn.functional.pad(measured, (0, taps - measured.shape[1]))
        bank_k = cfg.rir_sources.index("bank")
        out = torch.where((kind == bank_k)[:, None], measured, out)
    return out


def spec_augment(
    features: torch.Tensor, frame_lengths: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator
) -> torch.Tensor:
    """SpecAugment: time warp (if ``cfg.time_warp``), then frequency and time masks.

    Args:
        features: [batch, n_mels, frames] log-mel features.
        frame_lengths: [batch] valid frames per row (Whisper's ``num_frames``).
        cfg: the run's augmentation config; the features are returned as they are when
            ``cfg.spec_augment`` is off.
        generator: a ``torch.Generator`` on ``features.device``.

    Returns:
        [batch, n_mels, frames]: masked cells take the mean of the row's valid features
        (as lhotse/icefall do: in Whisper's normalised log-mel, 0 is not silence); the
        padding frames and rows not drawn (1 - ``spec_augment_prob``) are unchanged.
    """
    if not cfg.spec_augment:
        return features
    batch, n_mels, frames = features.shape
    device = features.device
    lengths = frame_lengths.to(device).clamp(max=frames)
    out = time_warp(features, lengths, cfg.time_warp, generator) if cfg.time_warp > 0 else features
    freq, time = spec_augment_masks(
        lengths,
        n_mels,
        frames,
        generator,
        cfg.num_freq_masks,
        cfg.freq_mask_width,
        cfg.num_time_masks,
        cfg.time_mask_width,
        cfg.max_time_mask_fraction,
    )
    valid = valid_mask(lengths, frames)  # [batch, frames]
    mean = (out * valid[:, None, :]).sum((1, 2)) / (lengths.clamp(min=1) * n_mels).to(out.dtype)
    masked = (freq[:, :, None] | time[:, None, :]) & valid[:, None, :]
    out = torch.where(masked, mean[:, None, None], out)
    apply = torch.rand(batch, generator=generator, device=device) < cfg.spec_augment_prob
    return torch.where(apply[:, None, None], out, features)
