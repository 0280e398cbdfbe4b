"""What every model family (whisper, wav2vec2, causal_lm) provides to training and evaluation.

Per-example ranks are not an argument here: callers wrap ``loss``/``generate`` in
``flexispeech.use_ranks(model, ranks)``, and the adapted layers read them. This keeps one
adaptive-layer code path for every family.

Training reaches a family through :func:`train_inputs`: the rows of a split become model
inputs and a loss by ``collate`` + ``loss``, unless the family has a cheaper way of its own
(Whisper's cached encoder prefix, ``flexispeech.models.whisper_prefix``).
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

from flexispeech.errors import ConfigError
from flexispeech.models.example import (
    Example,  # in a module of its own: the families need it, and get_family loads them
)


class ModelFamily(Protocol):
    """The interface of ``flexispeech.models.<family>.FAMILY``.

    A family may also offer ``cached_train_inputs(model, processor, split, n_layers, key,
    progress) -> TrainInputs``, a cheaper training path that :func:`train_inputs` takes
    when ``model.cache_encoder_layers`` is set (Whisper).
    The speech families are also :class:`SpeechFamily`.
    """

    name: str
    default_targets: tuple[str, ...]
    """Module-name suffixes that get Flexi-LoRA layers by default."""

    def load(
        self, source: str, device: str = "cpu", dtype: torch.dtype | None = None
    ) -> tuple[nn.Module, Any]:
        """Model and processor/tokenizer from a name that ``pretrained_path`` resolves."""
        ...

    def collate(
        self, processor: Any, examples: Sequence[Example], train: bool = True, device: str | None = None
    ) -> dict[str, torch.Tensor]:
        """A batch of model inputs (and ``labels`` when ``train``), first dim = len(examples).

        ``device``: where feature extraction may run (e.g. ``"cuda"`` in the training process;
        None: the CPU, as in loader workers); the inputs come back on the CPU either way."""
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


class SpeechFamily(ModelFamily, Protocol):
    """A family whose training labels are the token ids of each example's text (Whisper,
    Wav2Vec2): they can be made apart from the features, where the tokenising costs the
    training step nothing (the augmented loop's loader workers,
    ``training.augmented.AudioInputs``), and handed to ``collate``."""

    def labels(self, processor: Any, texts: Sequence[str]) -> torch.Tensor:
        """``labels`` [B, L] long of ``texts`` exactly as ``collate(train=True)`` makes them
        (-100 padded)."""
        ...

    def collate(
        self,
        processor: Any,
        examples: Sequence[Example],
        train: bool = True,
        device: str | None = None,
        labels: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """``ModelFamily.collate``; with ``labels`` [B, L] (``train``) those are the batch's
        labels as given, and the examples' texts are not tokenised."""
        ...

    def label_logprob(
        self, model: nn.Module, batch: dict[str, torch.Tensor], labels: Sequence[torch.Tensor]
    ) -> torch.Tensor:
        """[C, B] float32: the log-probability the model, at the ranks in force, gives each of
        C candidate transcripts of each row of the decoding ``batch`` (``labels[c]`` [B, L_c],
        as ``labels`` makes them); what ``evaluation.joint`` picks by."""
        ...

    def reuse_encoder(self, model: nn.Module) -> AbstractContextManager[Any]:
        """A block in which a batch decoded and scored several times (the joint pick, the
        consensus, the loop fallback) runs no encoder pass twice for a clip at one rank
        (Whisper: ``models.encoder_reuse``); ``contextlib.nullcontext()`` where the family
        keeps nothing."""
        ...


class TrainInputs(Protocol):
    """How training turns rows of a split into model inputs and a loss.

    ``collate`` runs in DataLoader workers (no model there); ``loss`` in the training
    process, inside ``use_ranks``.
    """

    def collate(self, rows: Sequence[int]) -> dict[str, torch.Tensor]:
        """Model inputs of split rows ``rows``, in that order (first dim = len(rows))."""
        ...

    def loss(self, model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean training loss of the batch (scalar)."""
        ...


@dataclass
class CollatedInputs:
    """Every family's way: ``family.collate`` of the rows' Examples, then ``family.loss``.

    ``split`` is a :class:`flexispeech.data.split.Split` (its items are Examples).
    """

    family: ModelFamily
    processor: Any
    split: Any

    def collate(self, rows: Sequence[int]) -> dict[str, torch.Tensor]:
        return self.family.collate(self.processor, [self.split[i] for i in rows], train=True)

    def loss(self, model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.family.loss(model, inputs)


def train_inputs(
    family: ModelFamily,
    model: nn.Module,
    processor: Any,
    split: Any,
    cache_encoder_layers: int = 0,
    cache_key: str = "",
    progress: bool = False,
) -> TrainInputs:
    """The training inputs of ``split`` for ``family``.

    With ``cache_encoder_layers`` (``model.cache_encoder_layers``) the family's
    ``cached_train_inputs`` computes the frozen bottom of the encoder once per row (keyed by
    ``cache_key``); only a family that has that method accepts it (Whisper).
    """
    if not cache_encoder_layers:
        return CollatedInputs(family, processor, split)
    cached = getattr(family, "cached_train_inputs", None)
    if cached is None:
        raise ConfigError(f"model.cache_encoder_layers: Whisper only, not the {family.name} family")
    return cached(model, processor, split, cache_encoder_layers, cache_key, progress)


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
        raise ConfigError(
            f"--device {device!r}: no {dev.type} device is available on this machine (use --device cpu)"
        )
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
