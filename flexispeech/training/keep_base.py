"""Keeping the base model's predictions: a distillation term towards the base model.

Adapters trained on synthetic voices made real human speech worse than the base model in
every GPU lease (recipes/synthetic/RESULTS.md), and no router or gate kept the recordings
closest to the training data away from the adapter. What the adapter learns has to change:
besides the labels' cross entropy, each training token also pays the KL divergence from the
base model's next-token distribution to the adapted one (learning without forgetting, Li &
Hoiem 2016; knowledge distillation with the frozen base model as the teacher):

    loss = CE(labels, p_adapted) + weight * mean_t KL(p_base,t || p_adapted,t)

The base model is the adapted model with every adapter at rank 0 (``adapter_off``), so the
teacher costs one extra forward pass without gradients and no second copy of the weights.
``tokens`` picks the positions that pay the term: ``all`` (every label token) or
``base_correct`` (only those where the base model's most likely token is the label: what the
base already gets right is kept; where it is wrong only the labels teach).

The logits are read by a forward hook, as :mod:`flexispeech.training.rank_losses` reads them:
families whose forward pass gets per-position labels and returns ``[B, L, V]`` logits
(Whisper, with or without the cached encoder prefix). For any other family the first step
stops with a ``ConfigError``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn

from flexispeech.errors import ConfigError
from flexispeech.lora.ranks import adapter_off
from flexispeech.models.family import TrainInputs
from flexispeech.training.config import KeepBaseConfig
from flexispeech.training.rank_losses import no_row_capture


@contextlib.contextmanager
def capture_logits(model: nn.Module) -> Iterator[list[tuple[torch.Tensor, torch.Tensor]]]:
    """Within the block, every forward pass of ``model`` with token labels appends
    ``(logits [B, L, V], labels [B, L])`` to the yielded list; the logits keep their graph."""
    inner = getattr(model, "module", model)  # DDP: the hook goes on the wrapped module
    captured: list[tuple[torch.Tensor, torch.Tensor]] = []

    def hook(module: nn.Module, args: Any, kwargs: dict[str, Any], output: Any) -> None:
        labels, logits = kwargs.get("labels"), getattr(output, "logits", None)
        if (
            labels is not None
            and logits is not None
            and logits.dim() == 3
            and logits.shape[:2] == labels.shape
        ):
            captured.append((logits, labels))

    handle = inner.register_forward_hook(hook, with_kwargs=True)
    try:
        yield captured
    finally:
        handle.remove()


def base_kl(
    base_logits: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor, tokens: str = "all"
) -> torch.Tensor:
    """Token-mean KL(p_base || p) over the positions that pay it.

    Args:
        base_logits: [B, L, V] the base model's logits (no gradient needed).
        logits: [B, L, V] the adapted model's logits.
        labels: [B, L] label ids, -100 where a position has no label.
        tokens: ``all`` (every labelled position) or ``base_correct`` (labelled positions
            where the base model's argmax is the label).

    Returns:
        A scalar in float32; 0 (still attached to ``logits``) when no position pays.
    """
    keep = labels != -100
    if tokens == "base_correct":
        keep = keep & (base_logits.argmax(-1) == labels)
    if not bool(keep.any()):
        return logits.sum() * 0.0
    # Only the kept positions go through log_softmax: [N, V] instead of [B, L, V].
    log_p = torch.log_softmax(logits[keep].float(), dim=-1)
    log_q = torch.log_softmax(base_logits[keep].float(), dim=-1)
    return nn.functional.kl_div(log_p, log_q, log_target=True, reduction="batchmean")


class KeepBaseInputs:
    """A run's :class:`TrainInputs` whose loss adds the distillation term towards the base.

    ``collate`` is the wrapped inputs'; ``loss`` runs the batch twice: once with the
    adapters off and no gradient (the teacher), once at the ranks in force (the student).
    ``last_kl`` holds the detached KL term of the last call, for the training log.
    """

    def __init__(self, inner: TrainInputs, cfg: KeepBaseConfig) -> None:
        self.inner, self.cfg = inner, cfg
        self.last_kl: torch.Tensor | None = None

    def collate(self, rows: Sequence[int]) -> dict[str, torch.Tensor]:
        return self.inner.collate(rows)

    def loss(self, model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """CE at the ranks in force + ``weight`` * KL from the base model (a scalar)."""
        # The teacher pass is not one of the batch's training passes: the per-rank loss
        # log (rank_losses) must not count it.
        with torch.no_grad(), adapter_off(model), no_row_capture(), capture_logits(model) as teacher:
            self.inner.loss(model, inputs)
        with capture_logits(model) as student:
            ce = self.inner.loss(model, inputs)
        if len(teacher) != 1 or len(student) != 1:
            raise ConfigError(
                "train.keep_base: needs a model family whose forward pass takes per-position labels "
                f"and returns [B, L, V] logits (Whisper); this one gave {len(student)} such passes"
            )
        (base_logits, _), (logits, labels) = teacher[0], student[0]
        kl = base_kl(base_logits, logits, labels, self.cfg.tokens)
        self.last_kl = kl.detach()
        return ce + self.cfg.weight * kl.to(ce.dtype)
