"""What every model family (whisper, wav2vec2, causal_lm) provides to training and evaluation.

Per-example ranks are not an argument here: callers wrap ``loss``/``generate`` in
``flexispeech.use_ranks(model, ranks)``, and the adapted layers read them. This keeps one
adaptive-layer code path for every family.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Any, Protocol

import torch
from torch import nn

from flexispeech.errors import ConfigError
from flexispeech.models.example import Example  # in a module of its own: the families need it, and get_family loads them


class ModelFamily(Protocol):
    """The interface of ``flexispeech.models.<family>.FAMILY``."""

    name: str
    default_targets: tuple[str, ...]
    """Module-name suffixes that get Flexi-LoRA layers by default."""

    def load(self, source: str, device: str = "cpu", dtype: torch.dtype | None = None) -> tuple[nn.Module, Any]:
        """Model and processor/tokenizer from a name that ``pretrained_path`` resolves."""
        ...

    def collate(self, processor: Any, examples: Sequence[Example], train: bool = True) -> dict[str, torch.Tensor]:
        """A batch of model inputs (and ``labels`` when ``train``), first dim = len(examples)."""
        ...

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean training loss of the batch (scalar); call inside ``use_ranks``."""
        ...

    def generate(
        self,
        model: nn.Module,
        processor: Any,
        batch: dict[str, torch.Tensor],
        num_beams: int = 1,
        max_new_tokens: int | None = None,
    ) -> list[str]:
        """Decoded text per example; call inside ``use_ranks`` (ranks follow beams).
        ``max_new_tokens`` caps the new tokens (per window for Whisper; None: the family's default)."""
        ...


FAMILIES = {
    "whisper": "flexispeech.models.whisper",
    "wav2vec2": "flexispeech.models.wav2vec2",
    "causal_lm": "flexispeech.models.causal_lm",
}


def get_family(name: str) -> ModelFamily:
    """The family object registered under ``name`` (its module's ``FAMILY``)."""
    if name not in FAMILIES:
        raise ConfigError(f"unknown model family {name!r}; known: {sorted(FAMILIES)}")
    return importlib.import_module(FAMILIES[name]).FAMILY


def check_device(device: str | torch.device) -> torch.device:
    """``device`` as a ``torch.device``; a ``ConfigError`` naming it when it is malformed or
    not available here (``--device cuda`` on a CPU-only machine) instead of torch's error
    from deep inside the first ``.to()``."""
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError) as err:
        raise ConfigError(f"--device {device!r}: not a torch device ({err})") from None
    if dev.type == "cpu" or dev.type == "meta":
        return dev
    backend = getattr(torch, dev.type, None)
    available = backend is not None and hasattr(backend, "is_available") and backend.is_available()
    if not available:
        raise ConfigError(f"--device {device!r}: no {dev.type} device is available on this machine (use --device cpu)")
    count = backend.device_count() if hasattr(backend, "device_count") else 1
    if dev.index is not None and dev.index >= count:
        raise ConfigError(f"--device {device!r}: only {count} {dev.type} device(s) here")
    return dev


def load_model(
    family: ModelFamily, source: str, device: str = "cpu", audio_ctx: int | None = None
) -> tuple[nn.Module, Any]:
    """``family.load(source, device)``, with Whisper's encoder window cut to ``audio_ctx``
    positions when given (see ``flexispeech.models.whisper.set_audio_ctx``)."""
    check_device(device)
    model, processor = family.load(source, device=device)
    if audio_ctx:
        if family.name != "whisper":
            raise ConfigError(f"model.audio_ctx applies to Whisper only, not to the {family.name} family")
        from flexispeech.models.whisper import set_audio_ctx

        set_audio_ctx(model, audio_ctx, processor)
    return model, processor
