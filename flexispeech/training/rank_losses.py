"""Loss per rank: which truncations of a nested adapter are learning, and which are not.

A training or validation batch mixes rows of several ranks and its loss is one number.
:func:`capture_row_losses` hooks the model's forward pass and keeps, per row, the summed
token cross entropy and the number of label tokens (detached: nothing changes for the
gradient), so :class:`RankLosses` can add them up per rank. The batch loss is the
token-mean over the same numbers, so the per-rank values split it exactly.

The capture reads the ``labels`` argument and the ``logits`` output of a forward pass
whose logits have one row per label (``[B, L, V]`` against ``[B, L]``: Whisper, whose
decoder predicts the label at each position, with or without the cached encoder prefix).
Families whose forward pass gets no such labels (the causal LM scores its answer tokens
itself; Wav2Vec2's CTC has no per-position labels) record nothing, and their logs carry
the overall loss only.
"""

from __future__ import annotations

import contextlib
import threading
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

_PAUSED = threading.local()


@contextlib.contextmanager
def no_row_capture() -> Iterator[None]:
    """Forward passes inside the block are not captured by :func:`capture_row_losses`
    (an auxiliary pass, e.g. the base model's in ``training.keep_base``)."""
    previous = getattr(_PAUSED, "on", False)
    _PAUSED.on = True
    try:
        yield
    finally:
        _PAUSED.on = previous


@contextlib.contextmanager
def capture_row_losses(model: nn.Module) -> Iterator[list[tuple[torch.Tensor, torch.Tensor]]]:
    """Within the block, every forward pass of ``model`` with token labels appends
    ``(nll_sum [B], n_tokens [B])`` (float64 / int64, on the logits' device) to the yielded
    list. They stay there: copying them to the host here would make every training step
    wait for its forward pass on a GPU (:class:`RankLosses` reads them when asked)."""
    captured: list[tuple[torch.Tensor, torch.Tensor]] = []

    def hook(module: nn.Module, args: Any, kwargs: dict[str, Any], output: Any) -> None:
        if getattr(_PAUSED, "on", False):
            return
        labels, logits = kwargs.get("labels"), getattr(output, "logits", None)
        if labels is None or logits is None or logits.dim() != 3 or logits.shape[:2] != labels.shape:
            return
        with torch.no_grad():
            nll = nn.functional.cross_entropy(
                logits.detach().flatten(0, 1), labels.flatten(), ignore_index=-100, reduction="none"
            ).view(labels.shape)
            captured.append((nll.sum(1).double(), (labels != -100).sum(1)))

    handle = model.register_forward_hook(hook, with_kwargs=True)
    try:
        yield captured
    finally:
        handle.remove()


class RankLosses:
    """Token losses summed per rank since the last :meth:`mean_by_rank` with ``reset``.

    Batches are added with their row losses still on the device and summed on the host only
    when a mean is asked for (a logged line, a validation pass): one copy for all of them,
    after the loss read that already waits for the device, instead of a wait every step.
    """

    def __init__(self) -> None:
        self.nll: dict[int, float] = defaultdict(float)
        self.tokens: dict[int, int] = defaultdict(int)
        self._pending: list[tuple[list[int], torch.Tensor, torch.Tensor]] = []

    def add(self, ranks: torch.Tensor, captured: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Add the rows of one batch: ``ranks`` [B] (on the host) in the rows' order,
        ``captured`` from :func:`capture_row_losses` around its forward pass (nothing when
        it holds none)."""
        if not captured:
            return
        nll, tokens = (torch.cat(parts) for parts in zip(*captured))
        if len(nll) != len(ranks):  # a family that runs several forward passes per batch
            return
        self._pending.append((ranks.tolist(), nll, tokens))

    def _settle(self) -> None:
        """Move the pending batches' sums to the host, one copy for all of them."""
        if not self._pending:
            return
        ranks = [r for batch_ranks, _, _ in self._pending for r in batch_ranks]
        nll = torch.cat([v for _, v, _ in self._pending]).tolist()
        tokens = torch.cat([n for _, _, n in self._pending]).tolist()
        self._pending.clear()
        for r, v, n in zip(ranks, nll, tokens):
            self.nll[r] += v
            self.tokens[r] += n

    def mean(self) -> float | None:
        """Token-mean loss over every rank (None when nothing was captured)."""
        self._settle()
        total = sum(self.tokens.values())
        return sum(self.nll.values()) / total if total else None

    def mean_by_rank(self, reset: bool = False) -> dict[str, float]:
        """``{rank: token-mean loss}`` (rank as a string, JSON's key type), rounded to 5 digits."""
        self._settle()
        out = {str(r): round(self.nll[r] / self.tokens[r], 5) for r in sorted(self.tokens) if self.tokens[r]}
        if reset:
            self.nll.clear()
            self.tokens.clear()
        return out
