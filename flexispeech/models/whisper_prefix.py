"""Cache the frozen bottom of Whisper's encoder: compute it once per utterance, not per step.

When the first ``k`` encoder layers carry no adapters, their output for an utterance never
changes during training (no augmentation, no dropout in Whisper's encoder), so it is
computed once and each training step runs only encoder layers ``k..`` and the decoder.
Backpropagation already stops at the first adapted layer; this also removes the frozen
layers' forward pass, the larger part of a CPU step when ``k`` covers the whole encoder.

At inference nothing changes: the full encoder runs and gives the same hidden states.
Training reaches this module through ``WhisperFamily.cached_train_inputs`` (see
``flexispeech.models.family.train_inputs``): :func:`build_prefix_cache` once, then
:class:`PrefixInputs` per batch.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from flexispeech.atomic import write_file
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


def loss_from_prefix(
    model: nn.Module, prefix: torch.Tensor, labels: torch.Tensor, n_layers: int
) -> torch.Tensor:
    """Whisper's token cross entropy, starting from cached encoder-prefix states."""
    from transformers.modeling_outputs import BaseModelOutput

    device = next(model.parameters()).device
    encoded = encode_suffix(model, prefix.to(device, dtype=model.dtype), n_layers)
    return model(encoder_outputs=BaseModelOutput(last_hidden_state=encoded), labels=labels.to(device)).loss


def build_prefix_cache(
    model: nn.Module,
    features: Callable[[list[Any]], torch.Tensor],
    split: Any,
    n_layers: int,
    progress: bool = False,
    key: str = "",
    batch_size: int = 16,
) -> list[torch.Tensor]:
    """Encoder-prefix states [positions, d_model] of every row of ``split`` (a speech
    :class:`~flexispeech.data.split.Split`), computed once. ``features`` turns a list of
    Examples into log-mel input features [batch, n_mels, frames] (the family's collate,
    passed in so that this module does not import the family that imports it).

    They are also stored under ``<corpus>/cache/encoder/`` (safetensors, named by a hash
    of ``key``, the layer count and the row ids), so the other runs of a recipe on the
    same corpus and model load them instead of recomputing.
    """
    from safetensors.torch import load_file, save_file
    from tqdm.auto import tqdm

    digest = hashlib.sha1(f"{key}|{n_layers}|{[r['id'] for r in split.rows]}".encode()).hexdigest()[:16]
    path = split.corpus_dir / "cache" / "encoder" / f"{digest}.safetensors"
    if path.is_file():
        return list(load_file(str(path))["prefix"])
    cache: list[torch.Tensor] = []
    for start in tqdm(
        range(0, len(split), batch_size), desc="encoder cache", unit="batch", disable=not progress
    ):
        examples = [split[i] for i in range(start, min(start + batch_size, len(split)))]
        cache += list(encode_prefix(model, features(examples), n_layers).cpu())
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix = {"prefix": torch.stack(cache).contiguous()}
    write_file(path, lambda tmp: save_file(prefix, str(tmp)))  # a killed run never leaves a truncated cache
    return cache


@dataclass
class PrefixInputs:
    """Training inputs from the cached prefix: ``{"prefix": [B, positions, d_model],
    "labels": [B, L]}`` of split rows (no audio is decoded), and ``loss_from_prefix``."""

    cache: list[torch.Tensor]
    labels: Callable[[Sequence[str]], torch.Tensor]
    """Token ids [B, L] of texts (the family's ``labels`` with its processor)."""
    texts: list[str]
    n_layers: int

    def collate(self, rows: Sequence[int]) -> dict[str, torch.Tensor]:
        return {
            "prefix": torch.stack([self.cache[i] for i in rows]),
            "labels": self.labels([self.texts[i] for i in rows]),
        }

    def loss(self, model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return loss_from_prefix(model, inputs["prefix"], inputs["labels"], self.n_layers)
