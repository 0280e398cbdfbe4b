"""SpecAugment on a padded batch of log-mel features (Park et al. 2019, with lhotse/icefall's rules).

Features are [batch, n_mels, frames] with ``frame_lengths`` [batch]: every mask and warp
stays inside a row's valid frames, and the padding frames are returned untouched. Masks
are drawn as tensors for the whole batch (no host sync, no Python loop over rows).

torchaudio's ``FrequencyMasking``/``TimeMasking`` (``mask_along_axis_iid``) are not used,
by design: they draw from the global RNG (no ``generator``, so a run could not be
replayed) and place time masks anywhere in the padded width, not within each row's frames.
"""

from __future__ import annotations

import torch

from flexispeech.data.augment_waveform import valid_mask


def _draw_masks(
    generator: torch.Generator,
    limit: torch.Tensor,
    count: torch.Tensor,
    max_width: torch.Tensor,
    n_masks: int,
    size: int,
) -> torch.Tensor:
    """Bool [batch, size]: the union of up to ``n_masks`` intervals per row.

    Row ``i`` gets ``count[i]`` intervals (the others are empty), each of a width drawn
    uniformly from {0..max_width[i]} and placed uniformly inside [0, limit[i]).
    """
    batch, device = limit.shape[0], limit.device
    u_width = torch.rand(batch, n_masks, generator=generator, device=device)
    u_start = torch.rand(batch, n_masks, generator=generator, device=device)
    width = (u_width * (max_width[:, None] + 1)).long().minimum(max_width[:, None])
    width = width * (torch.arange(n_masks, device=device)[None, :] < count[:, None])
    start = (u_start * (limit[:, None] - width + 1)).long().minimum(limit[:, None] - width)
    pos = torch.arange(size, device=device)[None, None, :]
    return ((pos >= start[..., None]) & (pos < (start + width)[..., None])).any(1)


def spec_augment_masks(
    frame_lengths: torch.Tensor,
    n_mels: int,
    frames: int,
    generator: torch.Generator,
    num_freq_masks: int,
    freq_mask_width: int,
    num_time_masks: int,
    time_mask_width: int,
    max_time_mask_fraction: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Frequency masks [batch, n_mels] and time masks [batch, frames] (bool, True = masked).

    Frequency: ``num_freq_masks`` bands of width U{0..F}. Time (lhotse's rule, so short
    rows are not wiped out): at most ``max_time_mask_fraction`` of a row's frames,
    ``min(num_time_masks, ceil(fraction * length / W))`` masks of width U{0..W'} with
    ``W' = min(W, floor(fraction * length / count))``, all inside the row's valid frames.
    """
    batch, device = frame_lengths.shape[0], frame_lengths.device
    f_width = min(freq_mask_width, n_mels)
    freq = _draw_masks(
        generator,
        torch.full((batch,), n_mels, device=device),
        torch.full((batch,), num_freq_masks, device=device),
        torch.full((batch,), f_width, device=device),
        num_freq_masks,
        n_mels,
    )
    lengths = frame_lengths.clamp(max=frames)
    budget = (lengths.double() * max_time_mask_fraction).floor().long()  # frames the masks may cover
    count = torch.ceil(budget / max(time_mask_width, 1)).long().clamp(max=num_time_masks)
    max_width = torch.minimum(torch.full_like(budget, time_mask_width), budget // count.clamp(min=1))
    time = _draw_masks(generator, lengths, count, max_width, num_time_masks, frames)
    return freq, time


def time_warp(
    features: torch.Tensor, frame_lengths: torch.Tensor, max_warp: int, generator: torch.Generator
) -> torch.Tensor:
    """Warp each row's valid frames in time (SpecAugment's time warp) -> [batch, n_mels, frames].

    A centre frame ``c`` drawn in [W + 1, L - W - 2] moves to ``c + w``, w in [-W, W]; the
    frames on each side are stretched linearly (interpolating between neighbouring
    frames) so that the first and the last valid frames stay where they are. Rows of
    L <= 2W + 3 frames and the padding are left unchanged.
    """
    batch, _, frames = features.shape
    device, dtype = features.device, features.dtype
    lengths = frame_lengths.clamp(max=frames)
    last = (lengths - 1).to(dtype)
    ok = lengths > 2 * max_warp + 3
    u_centre = torch.rand(batch, generator=generator, device=device, dtype=dtype)
    u_shift = torch.rand(batch, generator=generator, device=device, dtype=dtype)
    centre = max_warp + 1 + (u_centre * (lengths - 2 * max_warp - 2).clamp(min=1).to(dtype)).floor()
    target = centre + (u_shift * (2 * max_warp + 1)).floor().clamp(max=2 * max_warp) - max_warp
    t = torch.arange(frames, device=device, dtype=dtype)[None, :]
    left = t * centre[:, None] / target[:, None]
    right = centre[:, None] + (t - target[:, None]) * (last - centre)[:, None] / (last - target)[:, None]
    src = torch.where(t <= target[:, None], left, right)
    keep = ~(ok[:, None] & valid_mask(lengths, frames))
    src = torch.where(keep, t, src).clamp(min=0, max=frames - 1)
    lo = src.floor().long()
    hi = (lo + 1).clamp(max=frames - 1)
    frac = (src - lo.to(dtype))[:, None, :]
    lo_idx, hi_idx = (i[:, None, :].expand_as(features) for i in (lo, hi))  # the same frames in every mel bin
    warped = features.gather(2, lo_idx) * (1 - frac) + features.gather(2, hi_idx) * frac
    return torch.where(keep[:, None, :], features, warped)
