"""Nested-rank training (DyLoRA-style): every example also trains at a sampled second rank.

A router gives each training example one rank, and only the components ``< rank`` of each
adapted layer see that example. With routing by difficulty the low ranks are trained on
easy examples only, and a truncation that is never trained is never good. Nested
training adds, for a share ``prob`` of a batch's rows, a loss at a sampled second rank
(``lower``: a positive rank below the routed one; ``random``: any positive rank other than
the routed one), so every truncation is trained on every kind of input:

    loss = (L_routed + weight * L_sampled) / (1 + weight)

Both parts come from the batch already collated (no second data pass):

* ``joint``: the sampled rows are appended to the batch at their sampled ranks, the whole
  batch is put back in rank order (``rank_sort_order``) and runs in ONE forward pass. The
  family's loss is a token mean over all rows, so the two parts are weighted by their
  token counts; with ``weight`` other than 1, the row gradients are rescaled at the output
  layer (:func:`scale_rows`) to give the formula above exactly.
* ``separate``: a second forward pass on the sampled rows.

Rank 0 is never sampled: it is the base model and trains nothing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from flexispeech.errors import ConfigError
from flexispeech.host_copy import to_device
from flexispeech.lora.plans import rank_sort_order
from flexispeech.lora.ranks import use_ranks
from flexispeech.models.family import TrainInputs
from flexispeech.training.config import NestedConfig


def select_rows(batch: dict[str, torch.Tensor], index: torch.Tensor) -> dict[str, torch.Tensor]:
    """Rows ``index`` [M] (long, on the host) of every tensor of ``batch`` ([B, ...] each):
    the index goes to each device once, through pinned memory (a plain copy would make the
    step wait for the work queued before it, host_copy)."""
    on: dict[torch.device, torch.Tensor] = {}
    out = {}
    for k, v in batch.items():
        if v.device not in on:
            on[v.device] = to_device(index, v.device)
        out[k] = v[on[v.device]]
    return out


def check_nested(cfg: NestedConfig, ranks: Sequence[int]) -> None:
    """ConfigError when nesting is on but ``ranks`` hold fewer than two positive ranks
    (the fields themselves are checked when the config loads)."""
    if cfg.prob > 0 and len([r for r in ranks if r > 0]) < 2:
        raise ConfigError(
            f"train.nested: needs at least two positive ranks in adapter.ranks, got {list(ranks)}"
        )


def nested_generator(seed: int, epoch: int, batch_in_epoch: int, process_index: int = 0) -> torch.Generator:
    """The generator of one micro-batch's draws: a function of where the batch stands in
    the run, so a resumed run draws what an uninterrupted one drew."""
    digest = hashlib.sha1(f"nested|{seed}|{epoch}|{batch_in_epoch}|{process_index}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))


def sample_ranks(
    routed: torch.Tensor, ranks: Sequence[int], cfg: NestedConfig, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """The rows that also train at a sampled rank, and those ranks.

    Args:
        routed: [B] long, each row's routed rank (values from ``ranks``).
        ranks: the adapter's allowed ranks, ascending.
        cfg: the ``train.nested`` section.
        generator: the batch's generator (``nested_generator``).

    Returns:
        ``rows`` [M] long (ascending indices into the batch) and ``sampled`` [M] long, each
        a positive rank from ``ranks``: below the row's routed rank (``lower``) or any
        other than it (``random``). Rows with no such rank are left out.
    """
    positive = torch.tensor([r for r in ranks if r > 0], dtype=torch.long)
    routed = routed.cpu().long()
    picked = torch.rand(routed.shape[0], generator=generator) < cfg.prob
    u = torch.rand(
        routed.shape[0], generator=generator
    )  # one uniform per row: its choice among the candidates
    rows, sampled = [], []
    for i, r in enumerate(routed.tolist()):
        candidates = positive[positive < r] if cfg.mode == "lower" else positive[positive != r]
        if picked[i] and candidates.numel():
            rows.append(i)
            sampled.append(int(candidates[min(int(u[i] * candidates.numel()), candidates.numel() - 1)]))
    return torch.tensor(rows, dtype=torch.long), torch.tensor(sampled, dtype=torch.long)


class _ScaleRows(torch.autograd.Function):
    """Identity forward; backward multiplies row ``n``'s gradient by ``weights[n]``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(weights)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        (weights,) = ctx.saved_tensors
        return grad * weights.to(grad.dtype).view(-1, *([1] * (grad.dim() - 1))), None


@contextmanager
def scale_rows(model: nn.Module, weights: torch.Tensor) -> Iterator[None]:
    """Inside the block, the gradient reaching the output layer (``get_output_embeddings``,
    [B, L, V] logits) is multiplied by ``weights`` [B] per row. Backpropagation is linear,
    so every parameter's gradient from row ``n`` is scaled by ``weights[n]``: a per-row
    loss weight for a family whose loss is a plain token mean."""
    inner = getattr(model, "module", model)  # DDP
    head = inner.get_output_embeddings() if hasattr(inner, "get_output_embeddings") else None
    if head is None:
        raise ConfigError(
            "train.nested.weight other than 1 with forward=joint needs a model with an output layer"
        )
    hook = head.register_forward_hook(
        lambda _m, _i, out: _ScaleRows.apply(out, to_device(weights, out.device))
    )
    try:
        yield
    finally:
        hook.remove()


def _label_tokens(labels: torch.Tensor) -> torch.Tensor:
    """Tokens a row contributes to a token-mean loss ([B] float): labels other than -100
    after the decoder's one-position shift (Whisper and causal LMs both drop none/one; the
    counts only set relative weights, so the shift is the same for every row)."""
    return (labels != -100).sum(dim=1).float().clamp(min=1.0)


def nested_loss(
    inputs: TrainInputs,
    model: nn.Module,
    batch: dict[str, torch.Tensor],
    routed: torch.Tensor,
    ranks: Sequence[int],
    cfg: NestedConfig,
    generator: torch.Generator,
) -> torch.Tensor:
    """The loss of one micro-batch with nested-rank training (see the module docstring).

    Args:
        inputs: the run's training inputs (``TrainInputs.loss``).
        model: the adapted model.
        batch: the collated micro-batch on the model's device, every tensor [B, ...].
        routed: [B] long, the rows' routed ranks (the batch's rank order).
        ranks: the adapter's allowed ranks.
        cfg: the ``train.nested`` section.
        generator: the batch's generator (``nested_generator``).

    Returns:
        The scalar loss; without sampled rows, the batch's plain loss at its routed ranks.
    """
    rows, sampled = sample_ranks(routed, ranks, cfg, generator)
    if rows.numel() == 0:
        with use_ranks(model, routed):
            return inputs.loss(model, batch)
    w = float(cfg.weight)
    if cfg.forward == "separate":
        with use_ranks(model, routed):
            routed_loss = inputs.loss(model, batch)
        order = rank_sort_order(sampled)
        extra = select_rows(batch, rows[order])  # the sampled rows, in their ranks' order
        with use_ranks(model, sampled[order]):
            sampled_loss = inputs.loss(model, extra)
        return (routed_loss + w * sampled_loss) / (1 + w)
    all_ranks = torch.cat([routed.cpu().long(), sampled])
    index = torch.cat([torch.arange(routed.shape[0]), rows])
    order = rank_sort_order(all_ranks)
    index = index[order]
    joint = select_rows(batch, index)
    with use_ranks(model, all_ranks[order]):
        if w == 1.0:
            return inputs.loss(model, joint)
        # Row weights that turn the joint token mean into (L_routed + w L_sampled) / (1 + w).
        tokens = _label_tokens(batch["labels"].cpu())
        is_extra = order >= routed.shape[0]
        row_tokens = tokens[index]
        total = float(row_tokens.sum())
        t_routed, t_extra = float(tokens.sum()), float(tokens[rows].sum())
        weights = torch.where(is_extra, w * total / (t_extra * (1 + w)), total / (t_routed * (1 + w)))
        with scale_rows(model, weights):
            return inputs.loss(model, joint)
