"""Put Flexi-LoRA layers into any torch model, take them out, merge them, and set ranks.

The functional API follows minLoRA: ``inject`` replaces the matching ``nn.Linear``
modules in place, ``remove`` puts the originals back, ``merge`` folds one rank into the
base weights. Per-example ranks are given with the ``use_ranks`` context manager.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from flexispeech.errors import ConfigError, FlexispeechError
from flexispeech.lora.config import FlexiLoraConfig
from flexispeech.lora.layer import FlexiLoraLinear, RankSlot

STATE_ATTR = "_flexispeech"


class RankError(FlexispeechError, ValueError):
    """Ranks that the injected adapter cannot serve (not in the configured set, bad shape)."""


@dataclass
class FlexiState:
    """What ``inject`` records on the model (outside its modules and state_dict)."""

    config: FlexiLoraConfig
    slot: RankSlot
    requires_grad: dict[str, bool] = field(default_factory=dict)
    router: Any = None


def get_state(model: nn.Module) -> FlexiState:
    """The Flexi-LoRA state of ``model`` (also through wrappers such as DDP)."""
    for module in model.modules():
        state = module.__dict__.get(STATE_ATTR)
        if state is not None:
            return state
    raise FlexispeechError("model has no Flexi-LoRA adapter: call flexispeech.inject(model, config) first")


def _owner(model: nn.Module) -> nn.Module:
    """The module that ``inject`` was called on (layer names are relative to it)."""
    for module in model.modules():
        if STATE_ATTR in module.__dict__:
            return module
    raise FlexispeechError("model has no Flexi-LoRA adapter: call flexispeech.inject(model, config) first")


def flexi_layers(model: nn.Module) -> list[tuple[str, FlexiLoraLinear]]:
    """``(name, layer)`` for every Flexi-LoRA layer, names relative to the injected model."""
    return [(name, m) for name, m in _owner(model).named_modules() if isinstance(m, FlexiLoraLinear)]


def _set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, module)


def inject(model: nn.Module, config: FlexiLoraConfig, router: Any = None) -> nn.Module:
    """Replace every ``nn.Linear`` that ``config.target_modules`` matches by a
    ``FlexiLoraLinear`` (in place) and freeze all base parameters.

    Returns ``model``. Raises ``ConfigError`` when nothing matched, listing linear layers
    that could have been named, and ``FlexispeechError`` if the model already has adapters.
    """
    if any(STATE_ATTR in m.__dict__ for m in model.modules()):
        raise FlexispeechError("model already has a Flexi-LoRA adapter: call flexispeech.remove(model) first")
    linear_names = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    targets = [name for name in linear_names if config.matches(name)]
    if not targets:
        examples = sorted({name.rpartition(".")[2] for name in linear_names})[:12]
        raise ConfigError(
            f"target_modules {config.target_modules!r} matched no nn.Linear module; "
            f"linear layer names in this model include {examples}"
        )
    state = FlexiState(config=config, slot=RankSlot())
    for name, param in model.named_parameters():
        state.requires_grad[name] = param.requires_grad
        param.requires_grad_(False)
    for name in targets:
        _set_submodule(model, name, FlexiLoraLinear(model.get_submodule(name), config, state.slot))
    state.router = router
    model.__dict__[STATE_ATTR] = state
    return model


def _restore(model: nn.Module, state: FlexiState) -> None:
    del model.__dict__[STATE_ATTR]
    params = dict(model.named_parameters())
    for name, flag in state.requires_grad.items():
        if name in params:
            params[name].requires_grad_(flag)


def remove(model: nn.Module) -> nn.Module:
    """Take the adapters out, putting the original ``nn.Linear`` modules back untouched
    (the base weights were never modified, so the model is the base bit for bit)."""
    owner = _owner(model)
    state = owner.__dict__[STATE_ATTR]
    for name, layer in flexi_layers(owner):
        _set_submodule(owner, name, layer.base_layer)
    _restore(owner, state)
    return model


def merge(model: nn.Module, rank: int) -> nn.Module:
    """Fold the rank-``rank`` update into the base weights and remove the adapters.

    Afterwards every adapted layer is a plain ``nn.Linear`` whose output equals the
    unmerged layer's at ``rank`` (up to rounding). Returns ``model``.
    """
    owner = _owner(model)
    state = owner.__dict__[STATE_ATTR]
    check_ranks(state.config, [rank])
    for name, layer in flexi_layers(owner):
        base = layer.base_layer
        if rank > 0:
            with torch.no_grad():
                base.weight.add_(layer.delta_weight(rank).to(base.weight.dtype))
        _set_submodule(owner, name, base)
    _restore(owner, state)
    return model


def check_ranks(config: FlexiLoraConfig, ranks: Sequence[int]) -> None:
    """Raise ``RankError`` naming any rank that is not in ``config.ranks``."""
    bad = sorted({int(r) for r in ranks} - set(config.ranks))
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


@contextmanager
def use_ranks(model: nn.Module, ranks: int | Sequence[int] | torch.Tensor) -> Iterator[torch.Tensor]:
    """Run the forward passes inside the block with per-example ranks.

    Args:
        model: an injected model (or a wrapper around one, e.g. DDP).
        ranks: one rank per example, [batch] (or one int for all). A layer that sees
            ``k * batch`` rows (beam search, ``num_return_sequences``) repeats each rank
            ``k`` times, matching ``repeat_interleave`` expansion.

    Yields the validated ranks tensor (on the adapter's device). Only this model, in this
    thread, sees the ranks; the previous ranks come back when the block ends (nesting works).
    """
    state = get_state(model)
    tensor = as_rank_tensor(ranks)
    check_ranks(state.config, tensor.tolist())
    layers = flexi_layers(model)
    device = layers[0][1].lora_A.device if layers else tensor.device
    tensor = tensor.to(device)
    previous = state.slot.ranks
    state.slot.ranks = tensor
    try:
        yield tensor
    finally:
        state.slot.ranks = previous


def set_default_rank(model: nn.Module, rank: int) -> None:
    """The rank used outside any ``use_ranks`` block (``r_max`` after ``inject``)."""
    state = get_state(model)
    check_ranks(state.config, [rank])
    for _, layer in flexi_layers(model):
        layer.default_rank = int(rank)


def set_compute_path(model: nn.Module, path: str) -> None:
    """Choose how mixed-rank batches are computed (one of ``COMPUTE_PATHS``; see
    ``flexispeech.lora.kernels``)."""
    from flexispeech.lora.config import COMPUTE_PATHS

    if path not in COMPUTE_PATHS:
        raise ConfigError(f"compute path must be one of {list(COMPUTE_PATHS)}, got {path!r}")
    for _, layer in flexi_layers(model):
        layer.compute_path = path


def attach_router(model: nn.Module, router: Any) -> None:
    """Attach ``router`` to the model: it is saved with the adapter and used by ``route``."""
    get_state(model).router = router


def get_router(model: nn.Module) -> Any:
    """The attached router, or ``None``."""
    return get_state(model).router


def route(model: nn.Module, signals: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Ranks [batch] for a batch of complexity signals, from the attached router."""
    router = get_router(model)
    if router is None:
        raise FlexispeechError("no router attached to the model: use attach_router(model, router)")
    return router(signals)


def adapter_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The trainable adapter parameters (lora_A and lora_B of every layer)."""
    return [p for _, layer in flexi_layers(model) for p in (layer.lora_A, layer.lora_B)]
