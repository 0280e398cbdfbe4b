"""Helpers every model family shares: resolving a model name to a directory, and rank
contexts for sub-batches (long-form decoding, the adapter-off proxy pass)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

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


def current_ranks(model: nn.Module) -> torch.Tensor | None:
    """The ranks of the enclosing ``use_ranks`` block ([batch] or [1]), or None when the
    model has no adapter or no block is active."""
    from flexispeech.lora.inject import get_state

    try:
        state = get_state(model)
    except FlexispeechError:
        return None
    return state.slot.ranks


@contextmanager
def ranks_of_rows(model: nn.Module, rows: Sequence[int]) -> Iterator[None]:
    """Inside the block, the model runs on the sub-batch ``rows`` of the current batch:
    the ranks of those rows are the ones in force (for code that splits a batch, e.g.
    long-form audio decoded one utterance at a time)."""
    from flexispeech.lora.inject import use_ranks

    ranks = current_ranks(model)
    if ranks is None or ranks.numel() == 1:
        yield
        return
    with use_ranks(model, ranks[torch.as_tensor(list(rows), dtype=torch.long, device=ranks.device)]):
        yield


@contextmanager
def adapter_off(model: nn.Module) -> Iterator[None]:
    """Run the base model inside the block (every row at rank 0), whether or not rank 0
    is one of the adapter's configured ranks; a model without adapter is left as is.

    Rank 0 adds nothing in every compute path, so this is the base model exactly. The
    slot is set directly because ``use_ranks`` only admits configured ranks.
    """
    from flexispeech.lora.inject import get_state

    try:
        state = get_state(model)
    except FlexispeechError:
        yield
        return
    previous = state.slot.ranks
    device = next(model.parameters()).device
    state.slot.ranks = torch.zeros(1, dtype=torch.long, device=device)
    try:
        yield
    finally:
        state.slot.ranks = previous
