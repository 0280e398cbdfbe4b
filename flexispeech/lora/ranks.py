"""Per-example ranks: the one module that reads or writes them.

``inject`` gives a model one ``RankSlot`` (recorded in its ``FlexiState``) and hands it to
each adapted layer. ``use_ranks`` puts a batch's ranks into the slot for the duration of a
block (``rows=`` narrows them to a sub-batch), ``adapter_off`` puts rank 0 there, and the
layers read them back; code outside ``flexispeech.lora`` goes through these functions and
never touches the slot. The slot also caches the batch's ``RankPlan`` (``RankSlot.plan``),
so the grouping by rank is done once per forward pass, not once per layer.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from flexispeech.errors import FlexispeechError
from flexispeech.host_copy import to_device
from flexispeech.lora.config import FlexiLoraConfig
from flexispeech.lora.plans import RankPlan, expand_ranks, make_plan
from flexispeech.lora.router import Router

STATE_ATTR = "_flexispeech"


class RankError(FlexispeechError, ValueError):
    """Ranks that the injected adapter cannot serve (not in the configured set, bad shape)."""


class RankSlot(threading.local):
    """Where ``use_ranks`` puts the per-example ranks for the layers of ONE model.

    Every adapted layer of a model shares one slot, and each model has its own, so a
    second model in the process never sees these ranks. It is thread-local, so another
    thread running the same model does not either. ``torch.compile`` traces an attribute
    read of a ``threading.local`` (a ContextVar would graph-break), guarding on it.

    Attributes (per thread):
        ranks: [batch] or [1] int64 on the adapter's device, or None (the default rank).
        host: ``(ranks, version, values)``: the same ranks as Python ints, known on the host
            when ``use_ranks`` entered its block (before they moved to the device), so a
            plan needs no device-to-host copy; stale once ``ranks`` is edited in place.
        plan_cache: ``((ranks, version), {n_rows: RankPlan})`` for the ranks in force.
    """

    ranks: torch.Tensor | None
    host: tuple[torch.Tensor, int, list[int]] | None
    plan_cache: tuple[tuple[torch.Tensor, int], dict[int, RankPlan]] | None

    def __init__(self) -> None:
        # Instance attributes, set per thread (threading.local runs __init__ in every
        # thread that touches the slot), not class-level defaults: torch 2.11's dynamo
        # resolves a class default as a constant and then fails to guard the tensor that
        # use_ranks puts in the thread's dict ("Unexpected type <class 'torch.Tensor'>").
        self.ranks = None
        self.host = None
        self.plan_cache = None

    def plan(self, n_rows: int) -> RankPlan:
        """The ``RankPlan`` of the ranks in force expanded to ``n_rows`` rows (``ranks`` must
        be set), made once and shared by every layer of the model.

        The cache is keyed by the ranks tensor itself (kept alive, so its id cannot be
        reused) and its version counter (in-place edits make a new plan).
        """
        ranks = self.ranks
        if ranks is None:
            raise RankError("no ranks in force: RankSlot.plan is only called inside use_ranks")
        cache = self.plan_cache
        if cache is None or cache[0][0] is not ranks or cache[0][1] != ranks._version:
            cache = ((ranks, ranks._version), {})
            self.plan_cache = cache
        plans = cache[1]
        if n_rows not in plans:
            host = self.host
            values = host[2] if host is not None and host[0] is ranks and host[1] == ranks._version else None
            if values is not None:  # no device-to-host copy: the ranks as use_ranks saw them
                values = [r for r in values for _ in range(n_rows // len(values))]
            plans[n_rows] = make_plan(expand_ranks(ranks, n_rows), values)
        return plans[n_rows]

    def __deepcopy__(self, memo: dict) -> RankSlot:
        # A copied model starts with no ranks set (and threading.local cannot be copied).
        return RankSlot()

    def __reduce__(self) -> tuple:
        return (RankSlot, ())


@dataclass
class FlexiState:
    """What ``inject`` records on the model (outside its modules and state_dict)."""

    config: FlexiLoraConfig
    slot: RankSlot
    requires_grad: dict[str, bool] = field(default_factory=dict)
    router: Router | None = None


def state_owner(model: nn.Module) -> nn.Module:
    """The module that ``inject`` was called on (layer names are relative to it), also
    through wrappers such as DDP."""
    for module in model.modules():
        if STATE_ATTR in module.__dict__:
            return module
    raise FlexispeechError("model has no Flexi-LoRA adapter: call flexispeech.inject(model, config) first")


def get_state(model: nn.Module) -> FlexiState:
    """The Flexi-LoRA state of ``model`` (also through wrappers such as DDP)."""
    return state_owner(model).__dict__[STATE_ATTR]


def check_ranks(config: FlexiLoraConfig, ranks: Sequence[int]) -> None:
    """Raise ``RankError`` naming any rank that is not in ``config.ranks``. Rank 0, the base
    model, is always allowed (it adds nothing on every compute path, as ``adapter_off``
    relies on): a router may serve it to any adapter, e.g. behind a novelty gate."""
    bad = sorted({int(r) for r in ranks} - set(config.ranks) - {0})
    if bad:
        raise RankError(f"rank(s) {bad} not in the configured ranks {list(config.ranks)}")


def as_rank_tensor(ranks: int | Sequence[int] | torch.Tensor) -> torch.Tensor:
    """Ranks as a 1-D int64 tensor ([1] for a single int, which applies to every row)."""
    if isinstance(ranks, int):
        return torch.tensor([ranks], dtype=torch.long)
    tensor = torch.as_tensor(ranks)
    if tensor.dim() != 1 or tensor.numel() == 0:
        raise RankError(f"ranks must be an int or a non-empty 1-D sequence, got shape {tuple(tensor.shape)}")
    if tensor.is_floating_point() or tensor.is_complex() or tensor.dtype == torch.bool:
        raise RankError(f"ranks must be integers, got dtype {tensor.dtype}")
    return tensor.long()


def _adapter_device(model: nn.Module, slot: RankSlot) -> torch.device | None:
    """The device of the adapter weights: the layers of a model are the modules that
    ``inject`` handed its slot (None when it has none left)."""
    for module in model.modules():
        if getattr(module, "rank_slot", None) is slot:
            return module.lora_A.device
    return None


def current_ranks(model: nn.Module) -> torch.Tensor | None:
    """The ranks in force for ``model`` in this thread ([batch] or [1]), or None outside any
    ``use_ranks`` block (every row at the default rank) or when it has no adapter."""
    try:
        return get_state(model).slot.ranks
    except FlexispeechError:
        return None


def _select_rows(ranks: torch.Tensor, rows: Sequence[int] | torch.Tensor) -> torch.Tensor:
    """``ranks`` [batch] narrowed to the sub-batch ``rows`` [n_sub] (a [1] tensor, one rank
    for every row, stays as it is)."""
    index = torch.as_tensor(rows, dtype=torch.long).reshape(-1)
    if index.numel() == 0:
        raise RankError("use_ranks(rows=...): the sub-batch has no rows")
    if ranks.shape[0] == 1:
        return ranks
    bad = [int(i) for i in index.tolist() if not 0 <= i < ranks.shape[0]]
    if bad:
        raise RankError(f"use_ranks(rows=...): rows {bad} are outside the batch of {ranks.shape[0]} ranks")
    return ranks[index.to(ranks.device)]


@contextmanager
def use_ranks(
    model: nn.Module,
    ranks: int | Sequence[int] | torch.Tensor | None = None,
    *,
    rows: Sequence[int] | torch.Tensor | None = None,
) -> Iterator[torch.Tensor | None]:
    """Run the forward passes inside the block with per-example ranks.

    Args:
        model: an injected model (or a wrapper around one, e.g. DDP).
        ranks: one rank per example, [batch] (or one int / [1] for every row). A layer that
            sees ``k * batch`` rows (beam search, ``num_return_sequences``) repeats each rank
            ``k`` times, matching ``repeat_interleave`` expansion. Omitted (only with
            ``rows``): the ranks in force, i.e. those of the enclosing block.
        rows: run a sub-batch: indices [n_sub] into the batch that ``ranks`` describes. The
            block's forward passes then see ``batch[rows]``, and sub-batch row ``i`` runs at
            ``ranks[rows[i]]``; one rank for every row stays one rank for every row.
            Without ranks in force (no enclosing block, or a model without adapter) the
            block changes nothing: every row keeps the default rank.

    Yields the ranks in force inside the block ([batch], [n_sub] or [1], on the adapter's
    device; None when ``rows`` alone found no ranks in force). Only this model, in this
    thread, sees them; the previous ranks come back when the block ends (nesting works).
    """
    if ranks is None:
        if rows is None:
            raise RankError("use_ranks needs ranks, or rows= to narrow the ranks in force to a sub-batch")
        tensor, values = current_ranks(model), None  # validated when its block was entered
        if tensor is None:
            yield None
            return
        state = get_state(model)
    else:
        state = get_state(model)
        tensor = as_rank_tensor(ranks)
        values = tensor.tolist()  # the one host read of a batch's ranks (none for CPU tensors)
        check_ranks(state.config, values)
        device = _adapter_device(model, state.slot)
        if device is not None:
            tensor = to_device(tensor, device)  # pinned: queued without draining the GPU
    if rows is not None:
        tensor = _select_rows(tensor, rows)
        values = None
    with _ranks_in_force(state.slot, tensor, values):
        yield tensor


@contextmanager
def adapter_off(model: nn.Module) -> Iterator[None]:
    """Run the base model inside the block (every row at rank 0), whether or not rank 0 is
    one of the adapter's configured ranks; a model without adapter is left as is.

    Rank 0 adds nothing in every compute path, so this is the base model exactly (e.g. the
    first decoding pass of the perplexity proxy). The ranks in force before come back
    when the block ends.
    """
    try:
        state = get_state(model)
    except FlexispeechError:
        yield
        return
    device = _adapter_device(model, state.slot)
    with _ranks_in_force(state.slot, torch.zeros(1, dtype=torch.long, device=device), [0]):
        yield


@contextmanager
def _ranks_in_force(slot: RankSlot, ranks: torch.Tensor, values: list[int] | None = None) -> Iterator[None]:
    """``ranks`` in ``slot`` for the block (``values``: the same ranks on the host, if
    known), the previous ones restored after it (the only writer of ``RankSlot.ranks``)."""
    previous = slot.ranks, slot.host
    slot.ranks = ranks
    slot.host = (ranks, ranks._version, values) if values is not None else None
    try:
        yield
    finally:
        slot.ranks, slot.host = previous
