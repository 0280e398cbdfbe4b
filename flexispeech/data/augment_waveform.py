"""Waveform augmentation ops on a padded batch: noise at an SNR, speed perturbation,
reverberation, a telephone channel.

Every op takes ``audio`` [batch, samples] (zero past each row's length) and ``lengths``
[batch], keeps the padding zero and measures powers on the valid samples only. The ops
are plain tensor code on whatever device the batch is on, vectorised over the batch,
with no host sync: per-row choices are tensors, and a choice among a few variants is made
by computing each variant for the whole batch and selecting rows with ``torch.where``.

torchaudio is used for resampling and FFT convolution when it loads (``backend``
"auto" or "torchaudio"); it is imported lazily, never when flexispeech is imported: on a
CPU build of torch the PyPI torchaudio fails to load, and an installed but broken
torchaudio also breaks transformers' import. The plain-torch versions here compute the
same functions (the tests check that they agree where torchaudio loads) and are what
runs everywhere else.
"""

from __future__ import annotations

import functools
import math
from types import ModuleType

import torch

BACKENDS = ("auto", "torch", "torchaudio")
LOWPASS_ZERO_CROSSINGS = 6  # sinc lobes on each side of a resampling filter (torchaudio's default)
ROLLOFF = 0.99  # anti-aliasing cut-off as a fraction of the lower Nyquist frequency (torchaudio's default)
NOISE_COLOURS = {"white": 0.0, "pink": 1.0, "brown": 2.0}  # power spectrum ~ 1 / f^exponent
DECAY_60DB = 3.0 * math.log(10.0)  # amplitude exponent of a 60 dB energy decay: 10^(-60/20) = e^-6.91
TELEPHONE_RATE = 8000  # Hz: a narrowband (G.711) line's sampling rate
TELEPHONE_BAND = (300.0, 3400.0)  # Hz: the voice channel of a telephone line (ITU-T G.712)
MU_LAW_LEVELS = 256  # G.711's 8-bit mu-law codes


@functools.lru_cache(maxsize=1)
def _torchaudio_functional() -> ModuleType | None:
    """``torchaudio.functional`` when torchaudio loads beside this torch, else None."""
    try:
        import torchaudio.functional as taf  # lazy: see the module docstring
    except (ImportError, OSError, RuntimeError):  # OSError/RuntimeError: a build for another torch
        return None
    return taf


def torchaudio_ops(backend: str) -> ModuleType | None:
    """The torchaudio functional module that ``backend`` asks for, or None for plain torch.

    Raises:
        ValueError: an unknown backend.
        RuntimeError: ``backend == "torchaudio"`` and torchaudio does not load.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "torch":
        return None
    taf = _torchaudio_functional()
    if taf is None and backend == "torchaudio":
        raise RuntimeError("augment backend 'torchaudio' asked for, but torchaudio does not load here")
    return taf


def valid_mask(lengths: torch.Tensor, width: int) -> torch.Tensor:
    """Bool [batch, width]: True where a sample index is below the row's length."""
    return torch.arange(width, device=lengths.device)[None, :] < lengths[:, None]


def uniform(
    generator: torch.Generator, size: int, low: float, high: float, device: torch.device
) -> torch.Tensor:
    """[size] floats drawn uniformly from [low, high)."""
    return low + (high - low) * torch.rand(size, generator=generator, device=device)


def choose(generator: torch.Generator, size: int, n_options: int, device: torch.device) -> torch.Tensor:
    """[size] long indices drawn uniformly from range(n_options)."""
    return (torch.rand(size, generator=generator, device=device) * n_options).long().clamp_(max=n_options - 1)


def mean_power(audio: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Mean square [batch] of each row's valid samples (audio [batch, T], zero past lengths)."""
    return audio.square().sum(-1) / lengths.clamp(min=1).to(audio.dtype)


# ---------------------------------------------------------------- noise


def colored_noise(exponents: torch.Tensor, samples: int, generator: torch.Generator) -> torch.Tensor:
    """Gaussian noise [batch, samples] whose power spectrum falls as 1 / f^exponents[row].

    exponents [batch]: 0 white, 1 pink, 2 brown. Shaped in the frequency domain (white
    noise's spectrum times f^(-exponent/2)); the DC bin takes the lowest bin's gain so the
    noise stays finite. The level is arbitrary: ``add_noise_at_snr`` sets it.
    """
    device, dtype = exponents.device, exponents.dtype
    white = torch.randn(exponents.shape[0], samples, generator=generator, device=device, dtype=dtype)
    if samples < 2:
        return white
    freqs = torch.fft.rfftfreq(samples, device=device, dtype=dtype)
    freqs[0] = freqs[1]
    gain = freqs[None, :] ** (-exponents[:, None] / 2)
    return torch.fft.irfft(torch.fft.rfft(white) * gain, n=samples)


def tile_clips(
    clips: torch.Tensor, clip_lengths: torch.Tensor, index: torch.Tensor, offset: torch.Tensor, width: int
) -> torch.Tensor:
    """Rows [batch, width] cut from ``clips[index]`` starting at ``offset``, looping a clip
    that is shorter than ``width`` (clips [N, T_clip], clip_lengths [N], index/offset [batch]).

    Reads through a flat index, so a bank of long clips is never copied row by row.
    """
    length = clip_lengths[index].clamp(min=1)
    pos = (offset[:, None] + torch.arange(width, device=clips.device)[None, :]) % length[:, None]
    return clips.reshape(-1)[index[:, None] * clips.shape[1] + pos]


def random_clips(
    clips: torch.Tensor, clip_lengths: torch.Tensor, batch: int, width: int, generator: torch.Generator
) -> torch.Tensor:
    """[batch, width]: for each row a random clip of the bank from a random offset, looped."""
    index = choose(generator, batch, clips.shape[0], clips.device)
    offset = (torch.rand(batch, generator=generator, device=clips.device) * clip_lengths[index]).long()
    return tile_clips(clips, clip_lengths, index, offset, width)


def babble(
    audio: torch.Tensor, lengths: torch.Tensor, talkers: int, generator: torch.Generator
) -> torch.Tensor:
    """Babble [batch, T]: each row the sum of ``talkers`` other rows of the batch, each from a
    random offset and looped to the row's width. With a batch of one, the talker is the
    utterance itself at another offset (there is no other row)."""
    batch, width = audio.shape
    rows = torch.arange(batch, device=audio.device)
    out = torch.zeros_like(audio)
    for _ in range(talkers):
        # shift in [1, batch - 1]: never the row itself when there is another one
        shift = 1 + choose(generator, batch, max(batch - 1, 1), audio.device) if batch > 1 else rows * 0
        other = (rows + shift) % batch
        offset = (torch.rand(batch, generator=generator, device=audio.device) * lengths[other]).long()
        out = out + tile_clips(audio, lengths, other, offset, width)
    return out


def add_noise_at_snr(
    audio: torch.Tensor, lengths: torch.Tensor, noise: torch.Tensor, snr_db: torch.Tensor
) -> torch.Tensor:
    """``audio + g * noise`` [batch, T] with g per row so that, on the valid samples, the
    power ratio of audio to scaled noise is ``snr_db`` [batch] dB; the padding stays zero.

    A silent row stays silent (its noise gets zero gain). torchaudio's ``add_noise`` is
    not used: it is the same formula but turns a silent row into NaN and leaves noise in
    the padding; the tests check that the two agree on the rows where both are defined.
    """
    noise = noise * valid_mask(lengths, audio.shape[1]).to(noise.dtype)
    p_signal, p_noise = mean_power(audio, lengths), mean_power(noise, lengths)
    gain = torch.sqrt(p_signal / (p_noise.clamp(min=torch.finfo(audio.dtype).tiny) * 10.0 ** (snr_db / 10.0)))
    return audio + gain[:, None] * noise


# ---------------------------------------------------------------- speed


def speed_rates(factor: float, sample_rate: int) -> tuple[int, int]:
    """(orig, new) integer rates, reduced by their gcd, that speed audio up by ``factor``:
    the audio is read as if recorded at ``factor * sample_rate`` and resampled to
    ``sample_rate`` (pitch and tempo both change, as in Kaldi/ESPnet speed perturbation)."""
    orig, new = round(factor * sample_rate), int(sample_rate)
    gcd = math.gcd(orig, new)
    return orig // gcd, new // gcd


def sinc_resample_kernel(
    orig: int, new: int, device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor, int]:
    """Polyphase filters [new, 1, 2 * width + orig] of a Hann-windowed sinc resampler from
    rate ``orig`` to ``new`` (coprime integers), and the half-width ``width`` in input samples.

    Output sample ``j = q * new + p`` sits at input time ``q * orig + p * orig / new``;
    phase ``p``'s filter holds the windowed-sinc weights of the input samples around it,
    so a strided conv1d computes every phase at once (the bandlimited interpolation of
    J. O. Smith, as torchaudio implements it).
    """
    cutoff = min(orig, new) * ROLLOFF  # in units where the input rate is ``orig``
    width = math.ceil(LOWPASS_ZERO_CROSSINGS * orig / cutoff)
    taps = torch.arange(-width, width + orig, dtype=torch.float64, device=device) / orig  # input times
    phases = torch.arange(new, dtype=torch.float64, device=device)[:, None] / new
    t = ((taps[None, :] - phases) * cutoff).clamp(-LOWPASS_ZERO_CROSSINGS, LOWPASS_ZERO_CROSSINGS)
    window = torch.cos(t * math.pi / (2 * LOWPASS_ZERO_CROSSINGS)) ** 2
    kernel = torch.special.sinc(t) * window * (cutoff / orig)
    return kernel[:, None, :].to(dtype), width


_RESAMPLERS: dict[tuple[int, int, torch.dtype, torch.device], torch.nn.Module] = {}


def torchaudio_resampler(orig: int, new: int, dtype: torch.dtype, device: torch.device) -> torch.nn.Module:
    """torchaudio's ``transforms.Resample`` from ``orig`` to ``new`` Hz, made once per dtype and
    device. Why not ``functional.resample``: it builds its sinc kernel on every call, with a
    host scalar copied to the device inside, and on a GPU that copy waits for all the work
    queued before it, so each training step's augmentation would wait for the previous
    step's backward pass (``training.throughput``). The module builds the same kernel once;
    only torchaudio loaded (``torchaudio_ops``) calls this."""
    key = (orig, new, dtype, torch.device(device))
    if key not in _RESAMPLERS:
        import torchaudio.transforms as tat  # lazy: see the module docstring

        _RESAMPLERS[key] = tat.Resample(orig, new, dtype=dtype).to(device)
    return _RESAMPLERS[key]


def resample(audio: torch.Tensor, orig: int, new: int, backend: str = "auto") -> torch.Tensor:
    """Resample rows [batch, T] from rate ``orig`` to ``new`` -> [batch, ceil(T * new / orig)].

    Zero padding stays (nearly) zero up to the filter's reach past a row's end; callers
    cut at the new lengths.
    """
    if orig == new:
        return audio
    if torchaudio_ops(backend) is not None:
        return torchaudio_resampler(orig, new, audio.dtype, audio.device)(audio)
    gcd = math.gcd(orig, new)
    orig, new = orig // gcd, new // gcd
    kernel, width = sinc_resample_kernel(orig, new, audio.device, audio.dtype)
    padded = torch.nn.functional.pad(audio, (width, width + orig))
    out = torch.nn.functional.conv1d(padded[:, None, :], kernel, stride=orig)  # [batch, new, blocks]
    out = out.transpose(1, 2).reshape(audio.shape[0], -1)
    return out[:, : -(-audio.shape[1] * new // orig)]


def speed_lengths(lengths: torch.Tensor, orig: int, new: int) -> torch.Tensor:
    """Lengths [batch] after resampling from ``orig`` to ``new``: ceil(length * new / orig)."""
    return -(-lengths * new // orig)


def speed_perturb(
    audio: torch.Tensor,
    lengths: torch.Tensor,
    choice: torch.Tensor,
    factors: list[float],
    sample_rate: int,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Row ``i`` sped up by ``factors[choice[i]]`` (choice [batch] long; a factor of 1.0 is a
    row left bit-exact; an index past the list is a row left alone). Returns audio
    [batch, T'] and lengths [batch], where T' is the widest any factor (or none) could
    make the batch: a static width, so no host sync."""
    rates = [speed_rates(f, sample_rate) for f in factors]
    # rows left at 1.0 keep their length, so the width never shrinks below the input's
    width = max(audio.shape[1], *(-(-audio.shape[1] * new // orig) for orig, new in rates))
    out = torch.nn.functional.pad(audio, (0, width - audio.shape[1]))
    out_lengths = lengths
    for k, (orig, new) in enumerate(rates):
        if orig == new:
            continue
        sped = resample(audio, orig, new, backend)
        sped = torch.nn.functional.pad(sped, (0, width - sped.shape[1]))
        rows = choice == k
        out = torch.where(rows[:, None], sped, out)
        out_lengths = torch.where(rows, speed_lengths(lengths, orig, new), out_lengths)
    return out * valid_mask(out_lengths, width).to(out.dtype), out_lengths


# ---------------------------------------------------------------- reverberation


def synthetic_rirs(
    rt60: torch.Tensor, taps: int, sample_rate: int, generator: torch.Generator
) -> torch.Tensor:
    """Impulse responses [batch, taps]: a unit direct path, then Gaussian noise whose energy
    decays by 60 dB in ``rt60`` [batch] seconds (the classic synthetic diffuse tail).

    The tail's energy is set equal to the direct path's (a 0 dB direct-to-reverberant
    ratio, a talker a few metres away in a room), so the direct path stays the peak.
    """
    device, dtype = rt60.device, rt60.dtype
    t = torch.arange(taps, device=device, dtype=dtype)[None, :] / sample_rate
    tail = torch.randn(rt60.shape[0], taps, generator=generator, device=device, dtype=dtype)
    tail = tail * torch.exp(-DECAY_60DB * t / rt60[:, None].clamp(min=1e-3))
    tail[:, 0] = 0.0
    tail = tail / tail.square().sum(-1, keepdim=True).sqrt().clamp(min=torch.finfo(dtype).tiny)
    tail[:, 0] = 1.0
    return tail


@functools.lru_cache(maxsize=64)
def fft_size(n: int) -> int:
    """The smallest 2^a 3^b 5^c >= n: FFTs of sizes with large prime factors are slow, and the
    next power of two can be almost twice n (10 s + a 0.8 s RIR: 172,800 instead of 262,144)."""
    best, p2 = 1 << max(n - 1, 0).bit_length(), 1
    while p2 < best:
        p3 = p2
        while p3 < best:
            p5 = p3
            while p5 < n:
                p5 *= 5
            best = min(best, p5)
            p3 *= 3
        p2 *= 2
    return best


def fftconvolve(x: torch.Tensor, y: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """Full linear convolution of rows: x [batch, N], y [batch, K] -> [batch, N + K - 1]."""
    taf = torchaudio_ops(backend)
    if taf is not None:
        return taf.fftconvolve(x, y)
    n = x.shape[-1] + y.shape[-1] - 1
    n_fft = fft_size(n)
    spectrum = torch.fft.rfft(x, n=n_fft) * torch.fft.rfft(y, n=n_fft)
    return torch.fft.irfft(spectrum, n=n_fft)[..., :n]


def reverberate(
    audio: torch.Tensor, lengths: torch.Tensor, rirs: torch.Tensor, backend: str = "auto"
) -> torch.Tensor:
    """Each row convolved with its impulse response (rirs [batch, K]) -> [batch, T].

    The output is aligned on each RIR's peak (the direct path: no added delay), cut to the
    row's length (the tail past the end is dropped, as in lhotse/ESPnet) and rescaled to
    the row's input power, so reverberation changes the sound but not the level.
    """
    width = audio.shape[1]
    mask = valid_mask(lengths, width).to(audio.dtype)
    full = fftconvolve(audio, rirs, backend)
    peak = rirs.abs().argmax(-1)
    wet = full.gather(1, peak[:, None] + torch.arange(width, device=audio.device)[None, :]) * mask
    p_wet = mean_power(wet, lengths).clamp(min=torch.finfo(audio.dtype).tiny)
    gain = torch.sqrt(mean_power(audio, lengths) / p_wet)
    return wet * gain[:, None]


# ---------------------------------------------------------------- telephone channel


def mu_law_roundtrip(audio: torch.Tensor, levels: int = MU_LAW_LEVELS) -> torch.Tensor:
    """``audio`` (any shape, in [-1, 1]) coded to ``levels`` mu-law codes and decoded back:
    G.711's companding quantiser, whose error grows with the amplitude (about 38 dB SNR
    over a wide range of levels). The same arithmetic as torchaudio's ``mu_law_encoding``
    and ``mu_law_decoding``, written out because torchaudio does not load everywhere (see
    the module docstring) and these are four lines."""
    mu = levels - 1
    x = audio.clamp(-1.0, 1.0)
    companded = torch.sign(x) * torch.log1p(mu * x.abs()) / math.log1p(mu)
    codes = torch.round((companded + 1) / 2 * mu)  # integers 0 .. mu
    companded = codes / mu * 2 - 1
    return torch.sign(companded) * torch.expm1(companded.abs() * math.log1p(mu)) / mu


def band_pass(audio: torch.Tensor, sample_rate: int, low: float, high: float) -> torch.Tensor:
    """Rows [batch, T] with every frequency outside [low, high] Hz removed (a brick-wall
    filter on the row's FFT; rows are whole utterances, so the filter has no edge effects
    to window)."""
    spectrum = torch.fft.rfft(audio)
    freqs = torch.fft.rfftfreq(audio.shape[-1], d=1.0 / sample_rate, device=audio.device)
    keep = ((freqs >= low) & (freqs <= high)).to(spectrum.dtype)
    return torch.fft.irfft(spectrum * keep, n=audio.shape[-1])


def telephone_channel(
    audio: torch.Tensor, lengths: torch.Tensor, sample_rate: int, backend: str = "auto"
) -> torch.Tensor:
    """Rows [batch, T] as a narrowband telephone line delivers them -> [batch, T].

    Resampled to 8 kHz, limited to the 300-3400 Hz voice band, coded with 8-bit mu-law
    (G.711) at a level where each row's peak is full scale, and resampled back to
    ``sample_rate``; lengths are unchanged and the padding stays zero. As NeMo's transcode
    perturbation and Kaldi's narrowband recipes do, this teaches a model trained on
    wideband audio what a phone line leaves of it: nothing above 3.4 kHz, little below
    300 Hz, and quantisation noise that follows the speech.
    """
    width = audio.shape[1]
    narrow = band_pass(resample(audio, sample_rate, TELEPHONE_RATE, backend), TELEPHONE_RATE, *TELEPHONE_BAND)
    peak = narrow.abs().amax(-1, keepdim=True).clamp(min=torch.finfo(audio.dtype).tiny)
    narrow = mu_law_roundtrip(narrow / peak) * peak
    wide = resample(narrow, TELEPHONE_RATE, sample_rate, backend)[:, :width]
    wide = torch.nn.functional.pad(wide, (0, width - wide.shape[1]))
    return wide * valid_mask(lengths, width).to(wide.dtype)
