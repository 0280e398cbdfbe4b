"""The pooled base-encoder embedding: a router signal that sees the whole utterance.

The router of the Flexi-LoRA paper reads the base model's own representation of the
input: here the Whisper encoder's output, with the adapter off, averaged over the
positions that hold the utterance (not the padding of the 30-s window). One vector
[d_model] per utterance, cached as the column ``signal_embedding`` (a vector signal:
routers read it as ``d_model`` feature columns, see ``lora.router.feature_matrix``).

Its cost: when the encoder carries no adapter, inference runs this very encoder pass
anyway, so the signal is free; when the encoder is adapted, it is one extra base-encoder
pass per utterance.
"""

from __future__ import annotations

import torch
from torch import nn

from flexispeech.lora.ranks import adapter_off

EMBEDDING = "embedding"


def valid_positions(num_frames: torch.Tensor, window_positions: int) -> torch.Tensor:
    """Encoder positions [B] that hold audio: ``ceil(frames / 2)`` (the second conv has
    stride 2, kernel 3, padding 1), at least 1 and at most the window."""
    return ((num_frames.long() + 1) // 2).clamp(min=1, max=window_positions)


@torch.no_grad()
def pooled_embedding(
    model: nn.Module, input_features: torch.Tensor, num_frames: torch.Tensor
) -> torch.Tensor:
    """Mean of the base encoder's output over each utterance's valid positions.

    Args:
        model: a Whisper model, with or without adapters (they are bypassed).
        input_features: [B, n_mels, frames] log-mel features (``FAMILY.collate``); only the
            first encoder window is used.
        num_frames: [B] the true length of each clip in mel frames.

    Returns:
        [B, d_model] float32 on the CPU.
    """
    from flexispeech.models.whisper import FRAMES_PER_POSITION, encoder_positions

    positions = encoder_positions(model)
    window = positions * FRAMES_PER_POSITION
    features = input_features[:, :, :window]
    if features.shape[-1] < window:  # a short batch: pad with log-mel silence, as decoding does
        features = nn.functional.pad(features, (0, window - features.shape[-1]), value=float(features.min()))
    param = next(model.parameters())
    with adapter_off(model):
        hidden = model.get_encoder()(features.to(param.device, dtype=param.dtype)).last_hidden_state.float()
    valid = valid_positions(num_frames, positions).to(hidden.device)
    mask = (torch.arange(hidden.shape[1], device=hidden.device)[None, :] < valid[:, None]).float()  # [B, P]
    return ((hidden * mask[:, :, None]).sum(dim=1) / valid[:, None].float()).cpu()
