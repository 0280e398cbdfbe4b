"""On-the-fly augmentation: exact properties on the real fixtures (tests/assets/*.wav)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import soundfile as sf
import torch

from flexispeech.audio import SAMPLE_RATE, load_audio
from flexispeech.data.augment import (
    AugmentBanks,
    AugmentConfig,
    ClipBank,
    augment_waveforms,
    pad_waveforms,
    spec_augment,
    step_generator,
    unpad_waveforms,
)
from flexispeech.data.augment_spectrogram import spec_augment_masks, time_warp
from flexispeech.data.augment_waveform import (
    _torchaudio_functional,
    add_noise_at_snr,
    babble,
    band_pass,
    fft_size,
    fftconvolve,
    mu_law_roundtrip,
    resample,
    reverberate,
    speed_perturb,
    synthetic_rirs,
    telephone_channel,
    torchaudio_ops,
)
from flexispeech.errors import ConfigError
from flexispeech.training.config import RunConfig, from_dict, load_config

FILES = ("fox", "meeting", "stella")
ALL_ON = {
    "noise_prob": 1.0,
    "speed_prob": 1.0,
    "reverb_prob": 1.0,
    "telephone_prob": 1.0,
    "spec_augment": True,
    "spec_augment_prob": 1.0,
    "time_warp": 5,
    "noise_types": ["white", "pink", "brown", "babble"],
    "backend": "torch",
}
TORCHAUDIO = _torchaudio_functional() is not None
needs_torchaudio = pytest.mark.skipif(not TORCHAUDIO, reason="torchaudio does not load here")


@pytest.fixture(scope="module")
def batch(assets_dir) -> tuple[torch.Tensor, torch.Tensor]:
    """The three fixtures, the last cut short so that rows have padding: [3, T], lengths [3]."""
    clips = [load_audio(assets_dir / f"{name}.wav") for name in FILES]
    clips[2] = clips[2][:30_000]
    return pad_waveforms(clips)


def valid_power(audio: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    return torch.stack([row[:n].double().square().mean() for row, n in zip(audio, lengths.tolist())])


def assert_padding_zero(audio: torch.Tensor, lengths: torch.Tensor) -> None:
    for row, n in zip(audio, lengths.tolist()):
        assert torch.all(row[n:] == 0), "padding must stay zero"


def test_off_config_is_the_identity(batch) -> None:
    audio, lengths = batch
    features = torch.randn(3, 80, 200)
    frames = torch.tensor([200, 150, 90])
    for cfg in (AugmentConfig(), AugmentConfig(speed_factors=[1.1], rt60=[0.3, 0.3], snr_db=[0.0, 0.0])):
        out, out_lengths = augment_waveforms(audio, lengths, cfg, step_generator(0, 0))
        assert out is audio and out_lengths is lengths
        assert spec_augment(features, frames, cfg, step_generator(0, 0)) is features
    # probabilities of zero with every op switched on select the input rows bit for bit
    off = {
        "noise_prob": 0.0,
        "reverb_prob": 0.0,
        "speed_prob": 0.0,
        "telephone_prob": 0.0,
        "spec_augment_prob": 0.0,
    }
    cfg = AugmentConfig(**{**ALL_ON, **off})
    assert torch.equal(spec_augment(features, frames, cfg, step_generator(0, 0)), features)


@pytest.mark.parametrize("noise_type", ["white", "pink", "brown", "babble", "bank"])
def test_noise_lands_at_the_drawn_snr_on_valid_samples(batch, tmp_path, noise_type) -> None:
    audio, lengths = batch
    banks = None
    if noise_type == "bank":  # a clip shorter than every utterance: it is looped
        hum = 0.1 * np.sin(np.arange(8000) * 2 * np.pi * 120 / SAMPLE_RATE)
        sf.write(tmp_path / "hum.wav", hum, SAMPLE_RATE)
        bank_cfg = AugmentConfig(noise_prob=1.0, noise_types=["bank"], noise_dir=str(tmp_path))
        banks = AugmentBanks.load(bank_cfg)
    for snr in (0.0, 7.5, 25.0):
        cfg = AugmentConfig(noise_prob=1.0, snr_db=[snr, snr], noise_types=[noise_type], backend="torch")
        out, out_lengths = augment_waveforms(audio, lengths, cfg, step_generator(1, 2), banks=banks)
        assert torch.equal(out_lengths, lengths) and out.shape == audio.shape
        assert_padding_zero(out, lengths)
        measured = 10 * torch.log10(valid_power(audio, lengths) / valid_power(out - audio, lengths))
        assert torch.allclose(measured, torch.full_like(measured, snr), atol=0.1), measured


def test_snr_uses_only_the_valid_samples(batch) -> None:
    """A padded row gets exactly the noise it would get alone: padding counts in no power."""
    audio, lengths = batch
    noise = torch.randn(audio.shape, generator=torch.Generator().manual_seed(0))
    snr = torch.tensor([3.0, 10.0, -2.0])
    together = add_noise_at_snr(audio, lengths, noise, snr)
    for i, n in enumerate(lengths.tolist()):
        row = slice(i, i + 1)
        alone = add_noise_at_snr(audio[row, :n], lengths[row], noise[row, :n], snr[row])
        torch.testing.assert_close(together[i, :n], alone[0], rtol=1e-6, atol=1e-7)
    silence = torch.zeros(1, 100)
    silent = add_noise_at_snr(silence, torch.tensor([100]), torch.randn(1, 100), torch.tensor([5.0]))
    assert torch.equal(silent, torch.zeros(1, 100))  # no NaN, no noise on silence


def dominant_hz(row: torch.Tensor) -> float:
    spectrum = torch.fft.rfft(row.double() * torch.hann_window(len(row), dtype=torch.float64)).abs()
    return float(spectrum.argmax()) * SAMPLE_RATE / len(row)


@pytest.mark.parametrize("factor", [1.1, 0.9])
def test_speed_changes_length_and_pitch_by_the_factor(batch, factor) -> None:
    audio, lengths = batch
    tone = torch.sin(2 * math.pi * 440 * torch.arange(32_000) / SAMPLE_RATE)
    audio = torch.cat(
        [
            torch.nn.functional.pad(audio, (0, max(0, 32_000 - audio.shape[1]))),
            torch.nn.functional.pad(tone, (0, max(0, audio.shape[1] - 32_000)))[None],
        ]
    )
    lengths = torch.cat([lengths, torch.tensor([32_000])])
    cfg = AugmentConfig(speed_prob=1.0, speed_factors=[factor], backend="torch")
    out, out_lengths = augment_waveforms(audio, lengths, cfg, step_generator(0, 0))
    expected = [math.ceil(n / factor) for n in lengths.tolist()]
    assert out_lengths.tolist() == expected
    assert out.shape[1] >= max(expected)
    assert_padding_zero(out, out_lengths)
    assert abs(dominant_hz(out[3, : expected[3]]) - 440 * factor) < 1.0  # 0.5 Hz bins
    assert abs(valid_power(out, out_lengths)[3] - 0.5) < 0.01  # a resampled sine keeps its level


def test_speed_of_a_padded_row_equals_the_row_alone(batch) -> None:
    audio, lengths = batch
    first_factor = torch.zeros(3, dtype=torch.long)
    out, out_lengths = speed_perturb(audio, lengths, first_factor, [1.1], SAMPLE_RATE, "torch")
    n = int(lengths[2])
    alone = resample(audio[2:3, :n], 11, 10, "torch")
    assert alone.shape[1] == int(out_lengths[2])
    torch.testing.assert_close(out[2, : alone.shape[1]], alone[0], rtol=0, atol=1e-6)


@pytest.mark.parametrize("op", ["noise_prob", "reverb_prob", "speed_prob", "telephone_prob"])
def test_each_op_hits_its_share_of_rows_and_leaves_the_others_bit_exact(batch, op) -> None:
    audio, lengths = batch
    cfg = AugmentConfig(**{op: 0.5}, speed_factors=[1.1], backend="torch")
    hits = 0
    for step in range(20):
        out, out_lengths = augment_waveforms(audio, lengths, cfg, step_generator(0, step))
        for i, n in enumerate(lengths.tolist()):
            untouched = int(out_lengths[i]) == n and torch.equal(out[i, :n], audio[i, :n])
            hits += not untouched
    assert 15 <= hits <= 45, hits  # of 60 rows at p = 0.5 (a binomial's 4-sigma range)


def test_babble_mixes_other_utterances_of_the_batch() -> None:
    audio = torch.tensor([[1.0] * 6, [10.0] * 4 + [0.0] * 2, [100.0] * 5 + [0.0]])
    lengths = torch.tensor([6, 4, 5])
    for seed in range(5):
        one = babble(audio, lengths, 1, torch.Generator().manual_seed(seed))
        for i, own in enumerate((1.0, 10.0, 100.0)):
            assert set(one[i].tolist()) <= {1.0, 10.0, 100.0} - {own}  # one other talker, looped
        two = babble(audio, lengths, 2, torch.Generator().manual_seed(seed))
        sums = {a + b for a in (1.0, 10.0, 100.0) for b in (1.0, 10.0, 100.0)}
        assert set(two.flatten().tolist()) <= sums


def test_reverb_keeps_length_and_level_and_changes_the_sound(batch) -> None:
    audio, lengths = batch
    cfg = AugmentConfig(reverb_prob=1.0, rt60=[0.5, 0.5], backend="torch")
    out, out_lengths = augment_waveforms(audio, lengths, cfg, step_generator(0, 3))
    assert out.shape == audio.shape and torch.equal(out_lengths, lengths)
    assert_padding_zero(out, lengths)
    torch.testing.assert_close(valid_power(out, lengths), valid_power(audio, lengths), rtol=1e-4, atol=0)
    for i, n in enumerate(lengths.tolist()):
        corr = torch.corrcoef(torch.stack([out[i, :n], audio[i, :n]]))[0, 1]
        assert 0.3 < corr < 0.98  # still the utterance (the direct path), but smeared by the tail


def test_reverb_with_an_impulse_is_the_identity_whatever_its_delay(batch) -> None:
    audio, lengths = batch
    rirs = torch.zeros(3, 400)
    rirs[0, 0], rirs[1, 17], rirs[2, 399] = 1.0, 0.5, -2.0  # the peak is the direct path
    out = reverberate(audio, lengths, rirs, "torch")
    polarity = torch.tensor([[1.0], [1.0], [-1.0]])  # an inverted impulse inverts the wave
    torch.testing.assert_close(out, audio * polarity, rtol=1e-5, atol=1e-6)


def band_power_db(row: torch.Tensor, low: float, high: float) -> float:
    """Power of ``row`` between low and high Hz, in dB relative to its total power."""
    power = torch.fft.rfft(row.double()).abs().square()
    freqs = torch.fft.rfftfreq(len(row), d=1.0 / SAMPLE_RATE)
    return float(10 * torch.log10(power[(freqs >= low) & (freqs < high)].sum() / power.sum()))


def test_telephone_line_keeps_the_voice_band_and_removes_the_rest(batch) -> None:
    audio, lengths = batch
    t = torch.arange(48_000) / SAMPLE_RATE
    tones = {hz: 0.5 * torch.sin(2 * math.pi * hz * t) for hz in (100.0, 1000.0, 5000.0, 7000.0)}
    rows = torch.stack(list(tones.values()))
    out = telephone_channel(rows, torch.full((4,), 48_000), SAMPLE_RATE, "torch")
    level = valid_power(out, torch.full((4,), 48_000)) / valid_power(rows, torch.full((4,), 48_000))
    # 1 kHz: in the band, its level kept up to the coding error (-36 dB, and on a pure tone
    # correlated with it: up to 2 * 10^(-36/20) = 3 % of its power)
    assert abs(float(level[1]) - 1.0) < 0.05
    assert abs(dominant_hz(out[1]) - 1000.0) < 1.0
    # and coded: 8-bit mu-law leaves its noise about 36 dB under a full-scale tone
    coding_db = 10 * torch.log10(
        (out[1] - rows[1]).double().square().mean() / rows[1].double().square().mean()
    )
    assert -40 < float(coding_db) < -32, coding_db
    assert torch.all(level[[0, 2, 3]] < 1e-4), level  # 100 Hz, 5 and 7 kHz: gone (< -40 dB)
    # speech: lengths and padding kept, nothing left above the 3.4 kHz band edge but
    # quantisation noise, and still the same utterance
    out = telephone_channel(audio, lengths, SAMPLE_RATE, "torch")
    assert out.shape == audio.shape
    assert_padding_zero(out, lengths)
    for i, n in enumerate(lengths.tolist()):
        assert band_power_db(audio[i, :n], 4000, 8000) > -40  # the fixtures are wideband
        # what is left there is the images of the 8 kHz signal that the resampler's filter
        # (6 sinc lobes, as torchaudio's) attenuates by about 50 dB
        assert band_power_db(out[i, :n], 4000, 8000) < -45
        # the same utterance as an ideal line would pass it: the voice band of the original
        voice_band = band_pass(audio[i : i + 1, :n], SAMPLE_RATE, 300.0, 3400.0)[0]
        assert torch.corrcoef(torch.stack([out[i, :n], voice_band]))[0, 1] > 0.98


def test_mu_law_is_256_levels_finer_near_zero() -> None:
    ramp = torch.linspace(-1, 1, 100_001, dtype=torch.float64)
    coded = mu_law_roundtrip(ramp)
    assert coded.unique().numel() == 256
    quiet, loud = ramp.abs() < 0.01, ramp.abs() > 0.5
    assert (coded - ramp)[quiet].abs().max() < 5e-4  # steps of ~2e-4 near silence
    assert 0.01 < (coded - ramp)[loud].abs().max() < 0.05  # ~3 % of full scale near the peaks
    assert torch.equal(
        mu_law_roundtrip(torch.tensor([-5.0, 5.0])), mu_law_roundtrip(torch.tensor([-1.0, 1.0]))
    )


def test_fftconvolve_is_the_full_linear_convolution() -> None:
    x, y = torch.randn(2, 1000, dtype=torch.float64), torch.randn(2, 77, dtype=torch.float64)
    out = fftconvolve(x, y, "torch")
    for i in range(2):
        torch.testing.assert_close(out[i], torch.from_numpy(np.convolve(x[i].numpy(), y[i].numpy())))


def test_fft_size_is_the_next_5_smooth_number() -> None:
    def smooth(m: int) -> bool:
        for p in (2, 3, 5):
            while m % p == 0:
                m //= p
        return m == 1

    for n in [*range(1, 400), 160_000 + 12_800 - 1, 262_145]:
        size = fft_size(n)
        assert size >= n and smooth(size) and not any(smooth(m) for m in range(n, size)), n
    assert fft_size(172_799) == 172_800


def test_synthetic_rirs_decay_60_db_in_rt60() -> None:
    rt60 = torch.full((64,), 0.4)
    rirs = synthetic_rirs(rt60, 8000, SAMPLE_RATE, torch.Generator().manual_seed(0))
    assert torch.all(rirs[:, 0] == 1.0) and torch.all(rirs.abs().argmax(-1) == 0)
    assert torch.allclose(rirs[:, 1:].square().sum(-1), torch.ones(64))  # 0 dB direct-to-reverberant
    energy = rirs.square()
    early, late = energy[:, 1600:1920].mean(), energy[:, 4800:5120].mean()  # 0.1 s and 0.3 s in
    assert abs(10 * math.log10(early / late) - 30.0) < 1.0  # 0.2 s of a 0.4 s RT60 = 30 dB


def test_spec_augment_masks_stay_within_widths_and_valid_frames() -> None:
    cfg = AugmentConfig(spec_augment=True)
    frames = torch.tensor([3000, 1000, 240, 40, 0])
    for seed in range(20):
        freq, time = spec_augment_masks(
            frames,
            80,
            3000,
            torch.Generator().manual_seed(seed),
            cfg.num_freq_masks,
            cfg.freq_mask_width,
            cfg.num_time_masks,
            cfg.time_mask_width,
            cfg.max_time_mask_fraction,
        )
        assert torch.all(freq.sum(1) <= cfg.num_freq_masks * cfg.freq_mask_width)
        budget = torch.minimum((frames * cfg.max_time_mask_fraction).floor(), torch.tensor(10 * 100.0))
        assert torch.all(time.sum(1) <= budget), (time.sum(1), budget)
        valid = torch.arange(3000)[None, :] < frames[:, None]
        assert not torch.any(time & ~valid)
    assert time[0].sum() > 0  # a long row does get masked


def test_spec_augment_masks_with_the_row_mean_and_leaves_padding(batch) -> None:
    features = torch.randn(3, 80, 300, generator=torch.Generator().manual_seed(0))
    frames = torch.tensor([300, 200, 120])
    cfg = AugmentConfig(spec_augment=True, spec_augment_prob=1.0)
    out = spec_augment(features, frames, cfg, step_generator(5, 0))
    freq, time = spec_augment_masks(
        frames,
        80,
        300,
        step_generator(5, 0),
        cfg.num_freq_masks,
        cfg.freq_mask_width,
        cfg.num_time_masks,
        cfg.time_mask_width,
        cfg.max_time_mask_fraction,
    )
    for i, n in enumerate(frames.tolist()):
        masked = (freq[i][:, None] | time[i][None, :])[:, :n]
        row_mean = features[i, :, :n].mean()
        assert torch.allclose(out[i, :, :n][masked], row_mean.expand(int(masked.sum())))
        assert torch.equal(out[i, :, :n][~masked], features[i, :, :n][~masked])
        assert torch.equal(out[i, :, n:], features[i, :, n:])


def test_time_warp_keeps_ends_padding_and_order() -> None:
    frames = torch.tensor([300, 150, 20])
    ramp = torch.arange(300.0)[None, None, :].repeat(3, 4, 1)  # each frame holds its own index
    warped = time_warp(ramp, frames, 40, torch.Generator().manual_seed(0))
    for i, n in enumerate(frames.tolist()):
        assert torch.equal(warped[i, :, n:], ramp[i, :, n:])
        assert warped[i, 0, 0] == 0 and abs(warped[i, 0, n - 1] - (n - 1)) < 1e-3
        assert torch.all(warped[i, :, 1:n].diff(dim=-1) >= 0)  # a warp moves frames, never reorders them
    assert not torch.equal(warped[0], ramp[0]) and torch.equal(warped[2], ramp[2])  # 20 frames: too short


def test_same_seed_and_step_give_the_same_batch(batch) -> None:
    audio, lengths = batch
    cfg = AugmentConfig(**ALL_ON)
    features = torch.randn(3, 80, 300, generator=torch.Generator().manual_seed(0))
    frames = torch.tensor([300, 200, 120])

    def run(seed: int, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        g = step_generator(seed, step)
        out, out_lengths = augment_waveforms(audio, lengths, cfg, g)
        return out, out_lengths, spec_augment(features, frames, cfg, g)

    first, again, next_step, other_seed = run(0, 7), run(0, 7), run(0, 8), run(1, 7)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not torch.equal(first[2], next_step[2]) and not torch.equal(first[2], other_seed[2])
    assert not torch.equal(first[0][:, :1000], next_step[0][:, :1000])


def test_pad_and_unpad_round_trip(batch) -> None:
    audio, lengths = batch
    rows = unpad_waveforms(audio, lengths)
    assert [len(r) for r in rows] == lengths.tolist()
    again, again_lengths = pad_waveforms(rows)
    assert torch.equal(again, audio) and torch.equal(again_lengths, lengths)


def test_clip_bank_from_dir(tmp_path) -> None:
    with pytest.raises(ConfigError, match="no audio files"):
        ClipBank.from_dir(tmp_path)
    (tmp_path / "sub").mkdir()
    sf.write(tmp_path / "sub" / "b.flac", np.full(300, 0.25), SAMPLE_RATE)
    sf.write(tmp_path / "a.wav", np.full(500, 0.5), SAMPLE_RATE)
    bank = ClipBank.from_dir(tmp_path)
    assert bank.lengths.tolist() == [500, 300] and bank.clips.shape == (2, 500)
    assert torch.all(bank.clips[1, 300:] == 0) and torch.allclose(bank.clips[1, :300], torch.tensor(0.25))
    with pytest.raises(ConfigError, match="noise_dir is not set"):
        AugmentBanks.load(AugmentConfig(noise_prob=0.5, noise_types=["bank"]))


def test_run_config_reads_an_augment_section(tmp_path) -> None:
    assert not RunConfig().augment.waveform_ops and not RunConfig().augment.spec_augment
    path = tmp_path / "run.yaml"
    path.write_text(
        "augment: {spec_augment: true, noise_prob: 0.6, snr_db: [0, 25], noise_types: [pink, babble]}\n"
    )
    cfg = load_config(path, ["augment.speed_prob=0.5"])
    assert cfg.augment == AugmentConfig(
        spec_augment=True, noise_prob=0.6, snr_db=[0.0, 25.0], noise_types=["pink", "babble"], speed_prob=0.5
    )
    with pytest.raises(ConfigError, match="augment.nois_prob.*did you mean augment.noise_prob"):
        from_dict(RunConfig, {"augment": {"nois_prob": 0.5}})
    for bad, match in (
        ({"noise_prob": 1.5}, "noise_prob"),
        ({"snr_db": [20, 5]}, "snr_db"),
        ({"noise_types": ["purple"]}, "noise_types"),
        ({"backend": "sox"}, "backend"),
    ):
        with pytest.raises(ConfigError, match=match):
            from_dict(RunConfig, {"augment": bad})


@pytest.mark.skipif(TORCHAUDIO, reason="torchaudio loads here")
def test_backend_torchaudio_fails_clearly_without_it() -> None:
    assert torchaudio_ops("auto") is None
    with pytest.raises(RuntimeError, match="torchaudio does not load"):
        torchaudio_ops("torchaudio")


@needs_torchaudio
def test_plain_torch_ops_agree_with_torchaudio(batch) -> None:
    import torchaudio.functional as taf

    audio, lengths = batch
    for orig, new in ((11, 10), (9, 10), (16_000, 8_000)):
        expected = taf.resample(audio, orig, new)
        torch.testing.assert_close(resample(audio, orig, new, "torch"), expected, rtol=0, atol=1e-5)
    rirs = synthetic_rirs(torch.full((3,), 0.3), 4800, SAMPLE_RATE, torch.Generator().manual_seed(0))
    expected = taf.fftconvolve(audio, rirs)
    torch.testing.assert_close(fftconvolve(audio, rirs, "torch"), expected, rtol=0, atol=1e-4)
    noise = torch.randn(audio.shape, generator=torch.Generator().manual_seed(1))
    noise = noise * (torch.arange(audio.shape[1])[None, :] < lengths[:, None])
    snr = torch.tensor([0.0, 10.0, 20.0])
    expected = taf.add_noise(audio, noise, snr, lengths)
    torch.testing.assert_close(add_noise_at_snr(audio, lengths, noise, snr), expected, rtol=1e-5, atol=1e-6)
    ramp = torch.linspace(-1, 1, 10_001)
    expected = taf.mu_law_decoding(taf.mu_law_encoding(ramp, 256), 256)
    torch.testing.assert_close(mu_law_roundtrip(ramp), expected, rtol=0, atol=1e-6)
    on = {**ALL_ON, "noise_types": ["pink"]}
    torch_out = augment_waveforms(audio, lengths, AugmentConfig(**on), step_generator(0, 1))
    ta_cfg = AugmentConfig(**{**on, "backend": "torchaudio"})
    ta_out = augment_waveforms(audio, lengths, ta_cfg, step_generator(0, 1))
    assert torch.equal(torch_out[1], ta_out[1])
    # Chained, the ops' differences (1e-5 alone, above) grow: the reverberation sums up to
    # 0.8 s of taps and the level is set again after it and after the noise. Measured where
    # torchaudio loads (torch 2.11): 8 of 151,398 samples differ by more than 1e-4, the
    # largest by 9.3e-4. So: every sample within 2e-3, and the difference 40 dB or more
    # below the signal, row by row.
    torch.testing.assert_close(torch_out[0], ta_out[0], rtol=0, atol=2e-3)
    error = (torch_out[0] - ta_out[0]).double().square().sum(1)
    assert torch.all(error <= 1e-4 * ta_out[0].double().square().sum(1))
