"""What the speed benchmark runs on: random-initialised Whisper models of released shapes,
their adapters (PEFT LoRA or Flexi-LoRA, added and removed again), random batches and
mixed ranks."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from flexispeech.bench.spec import MAX_LABEL_LEN, BenchSpec
from flexispeech.errors import ConfigError


def _shape(d_model: int, layers: int, heads: int, mel_bins: int = 80) -> dict[str, int]:
    """WhisperConfig values of a released checkpoint: encoder and decoder alike, the
    feed-forward width 4 × d_model."""
    per_side = dict(layers=layers, attention_heads=heads, ffn_dim=4 * d_model)
    sides = {f"{side}_{k}": v for side in ("encoder", "decoder") for k, v in per_side.items()}
    return dict(d_model=d_model, num_mel_bins=mel_bins, **sides)


# The released checkpoints' shapes (d_model, layers, heads, mel bins).
SHAPES: dict[str, dict[str, int]] = {
    "tiny": _shape(384, 4, 6),
    "base": _shape(512, 6, 8),
    "small": _shape(768, 12, 12),
    "large-v3": _shape(1280, 32, 20, mel_bins=128),
}
TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")
RANKS = (0, 4, 8, 16, 32, 64)
HOP = 160  # samples per log-mel frame (Whisper's hop length)


def build_whisper(spec: BenchSpec) -> nn.Module:
    """A random-initialised Whisper of ``spec.shape`` on ``spec.device`` in ``spec.dtype``,
    its encoder window cut to ``spec.audio_ctx`` positions."""
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    from flexispeech.models.whisper import FULL_POSITIONS, set_audio_ctx

    if spec.shape not in SHAPES:
        raise ConfigError(f"bench shape: expected one of {sorted(SHAPES)}, got {spec.shape!r}")
    torch.manual_seed(spec.seed)
    cfg = WhisperConfig(
        vocab_size=51866,
        max_source_positions=FULL_POSITIONS,
        max_target_positions=MAX_LABEL_LEN,
        attn_implementation="sdpa",
        **SHAPES[spec.shape],
    )
    with torch.device(spec.device):
        model = WhisperForConditionalGeneration(cfg)
    # Cut as every command cuts a real model: a window past Whisper's 30 s is the same
    # one-line error here.
    set_audio_ctx(model, spec.audio_ctx)
    return model.to(dtype=getattr(torch, spec.dtype)).requires_grad_(False)


@contextmanager
def peft_adapters(model: nn.Module, rank: int, same_dtype: bool) -> Iterator[nn.Module]:
    """PEFT LoRA at ``rank`` on the targets; ``same_dtype=False`` is PEFT's default (fp32
    adapter weights on a bf16 model)."""
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(r=rank, lora_alpha=16, target_modules=list(TARGETS), lora_dropout=0.0)
    peft_model = get_peft_model(model, cfg, autocast_adapter_dtype=not same_dtype)
    try:
        yield peft_model
    finally:
        peft_model.unload()


@contextmanager
def flexi_adapters(model: nn.Module, path: str, fused: bool = True) -> Iterator[nn.Module]:
    """Flexi-LoRA on the targets at ``RANKS``, every layer on ``path`` with the ``fused``
    option as given (off: the plain-op paths, a baseline)."""
    from flexispeech.lora import FlexiLoraConfig, inject, remove

    inject(model, FlexiLoraConfig(ranks=RANKS, alpha=16.0, target_modules=TARGETS))
    from flexispeech.lora.inject import flexi_layers

    for _, layer in flexi_layers(model):
        nn.init.normal_(layer.lora_B, std=0.01)  # non-zero B: a trained adapter's cost
        layer.compute_path = path
        layer.fused = fused
    try:
        yield model
    finally:
        remove(model)


def make_batch(spec: BenchSpec, model: nn.Module, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Random features [B, n_mels, 2*audio_ctx] and labels [B, label_len] on the device."""
    cfg = model.config
    feats = torch.randn(spec.batch, cfg.num_mel_bins, 2 * spec.audio_ctx, generator=gen)
    labels = torch.randint(0, cfg.vocab_size, (spec.batch, spec.label_len), generator=gen)
    return {
        "input_features": feats.to(spec.device, getattr(torch, spec.dtype)),
        "labels": labels.to(spec.device),
    }


def mixed_ranks(batch: int, gen: torch.Generator) -> torch.Tensor:
    """Ranks drawn uniformly from ``RANKS`` (about 1/6 of the rows at rank 0)."""
    return torch.tensor(RANKS)[torch.randint(len(RANKS), (batch,), generator=gen)]


def permute(batch: dict[str, torch.Tensor], order: torch.Tensor) -> dict[str, torch.Tensor]:
    return {k: v[order.to(v.device)] for k, v in batch.items()}
