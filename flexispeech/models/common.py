"""Helpers every model family shares: resolving a model name to a directory and loading it;
checking training labels made outside ``collate``.

(Ranks are not handled here: sub-batches run under ``use_ranks(model, rows=...)`` and the
base model under ``adapter_off``, both in ``flexispeech.lora``.)"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from flexispeech.errors import FlexispeechError


def resolve_source(source: str) -> str:
    """What ``flexispeech.models.sources.pretrained_path`` makes of the name: a packaged
    model converted into the cache on first use, a local (or converted CTranslate2)
    directory, or the name itself, for ``from_pretrained`` to read as a hub id."""
    from flexispeech.models.sources import pretrained_path

    return str(pretrained_path(source))


def from_pretrained(loader: Callable[..., Any], source: str, what: str, **kwargs: Any) -> Any:
    """``loader(source, **kwargs)``, turning "not found / no network" into one-line errors."""
    try:
        return loader(source, **kwargs)
    except (OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise FlexispeechError(f"model {source!r}: cannot load the {what} ({first})") from None


def checked_labels(labels: torch.Tensor, rows: int) -> torch.Tensor:
    """``labels`` [rows, L] token ids as a family's ``collate`` was given them, or a
    ValueError: labels made for another batch would pair each clip with another clip's
    text and train on it without a sign."""
    if labels.dim() != 2 or labels.shape[0] != rows:
        raise ValueError(f"labels: expected [{rows}, L] token ids, got shape {list(labels.shape)}")
    return labels


def batch_labels(
    labels: torch.Tensor | None, texts: Sequence[str], make: Callable[[Sequence[str]], torch.Tensor]
) -> torch.Tensor:
    """A family ``collate``'s ``labels`` [B, L]: those given (made beforehand by the training
    loader's workers; ``checked_labels``), else ``make(texts)`` (the family's ``labels``)."""
    return checked_labels(make(texts) if labels is None else labels, len(texts))
