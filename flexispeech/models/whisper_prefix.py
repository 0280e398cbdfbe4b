"""Cache the frozen bottom of Whisper's encoder: compute it once per utterance, not per step.

When the first ``k`` encoder layers carry no adapters, their output for an utterance never
changes during training (no augmentation, no dropout in Whisper's encoder), so it is
computed once and each training step runs only encoder layers ``k..`` and the decoder.
Backpropagation already stops at the first adapted layer; this also removes the frozen
layers' forward pass, the larger part of a CPU step when ``k`` covers the whole encoder.

At inference nothing changes: the full encoder runs and gives the same hidden states.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from flexispeech.errors import ConfigError


def encoder_layers(model: nn.Module) -> int:
    """Number of encoder layers."""
    return len(model.get_encoder().layers)


def frozen_prefix_pattern(targets: Sequence[str], n_frozen: int) -> str:
    """A ``target_modules`` regex: the module suffixes ``targets`` everywhere except in
    encoder layers ``0..n_frozen-1`` (and the encoder's conv front end)."""
    suffixes = "|".join(t.replace(".", r"\.") for t in targets)
    if n_frozen <= 0:
        return rf".*\.({suffixes})"
    frozen = "|".join(str(i) for i in range(n_frozen))
    return rf"(?!(.*\.)?encoder\.layers\.({frozen})\.).*\.({suffixes})"


def _layer(layer: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    out = layer(hidden, None)
    return out[0] if isinstance(out, tuple) else out  # older transformers return tuples


@torch.no_grad()
def encode_prefix(model: nn.Module, input_features: torch.Tensor, n_layers: int) -> torch.Tensor:
    """Hidden states after the conv front end and encoder layers ``0..n_layers-1``
    ([B, positions, d_model]); when ``n_layers`` is every layer, after the final norm."""
    enc = model.get_encoder()
    if not 0 < n_layers <= len(enc.layers):
        raise ConfigError(f"model.cache_encoder_layers: must be in [1, {len(enc.layers)}], got {n_layers}")
    x = input_features.to(enc.conv1.weight.device, dtype=enc.conv1.weight.dtype)
    x = nn.functional.gelu(enc.conv1(x))
    x = nn.functional.gelu(enc.conv2(x)).permute(0, 2, 1)
    hidden = x + enc.embed_positions.weight[: x.shape[1]]
    for layer in enc.layers[:n_layers]:
        hidden = _layer(layer, hidden)
    if n_layers == len(enc.layers):
        hidden = enc.layer_norm(hidden)
    return hidden


def encode_suffix(model: nn.Module, prefix: torch.Tensor, n_layers: int) -> torch.Tensor:
    """Finish the encoder from ``encode_prefix`` output: layers ``n_layers..`` and the
    final norm ([B, positions, d_model]); gradients flow into their adapters."""
    enc = model.get_encoder()
    if n_layers == len(enc.layers):
        return prefix
    hidden = prefix
    for layer in enc.layers[n_layers:]:
        hidden = _layer(layer, hidden)
    return enc.layer_norm(hidden)


def loss_from_prefix(model: nn.Module, prefix: torch.Tensor, labels: torch.Tensor, n_layers: int) -> torch.Tensor:
    """Whisper's token cross entropy, starting from cached encoder-prefix states."""
    from transformers.modeling_outputs import BaseModelOutput

    device = next(model.parameters()).device
    encoded = encode_suffix(model, prefix.to(device, dtype=model.dtype), n_layers)
    return model(encoder_outputs=BaseModelOutput(last_hidden_state=encoded), labels=labels.to(device)).loss
