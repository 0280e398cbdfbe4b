"""Put Flexi-LoRA layers into any torch model, take them out, merge them, set their paths.

The functional API follows minLoRA: ``inject`` replaces the matching ``nn.Linear``
modules in place, ``remove`` puts the originals back, ``merge`` folds one rank into the
base weights. Per-example ranks are given with ``use_ranks`` (``flexispeech.lora.ranks``).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from flexispeech.errors import ConfigError, FlexispeechError
from flexispeech.lora.config import COMPUTE_PATHS, FlexiLoraConfig
from flexispeech.lora.layer import FlexiLoraLinear
from flexispeech.lora.ranks import (
    STATE_ATTR,
    FlexiState,
    RankSlot,
    check_ranks,
    get_state,
    state_owner,
    use_ranks,  # noqa: F401  (re-exported: callers import it from here)
)
from flexispeech.lora.router import Router


def flexi_layers(model: nn.Module) -> list[tuple[str, FlexiLoraLinear]]:
    """``(name, layer)`` for every Flexi-LoRA layer, names relative to the injected model."""
    return [(name, m) for name, m in state_owner(model).named_modules() if isinstance(m, FlexiLoraLinear)]


def _set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, module)


def _parent(model: nn.Module, name: str) -> nn.Module:
    parent_name = name.rpartition(".")[0]
    return model.get_submodule(parent_name) if parent_name else model


def _unwrappable(model: nn.Module, linear_names: list[str]) -> set[str]:
    """The linear layers whose forward is never called: ``out_proj`` of a torch
    ``nn.MultiheadAttention``, whose forward hands the weight to
    ``F.multi_head_attention_forward`` itself (an adapter there would never run)."""
    return {name for name in linear_names if isinstance(_parent(model, name), nn.MultiheadAttention)}


def _keep_module_path(module: nn.Module, args: tuple) -> None:
    """A forward pre-hook that does nothing: its presence is what counts (below)."""


def _inside_torch_fast_path(model: nn.Module, name: str) -> bool:
    """Whether module ``name`` lies inside a torch ``nn.TransformerEncoderLayer``, whose
    inference fast path (eval mode) reads ``linear1.weight`` etc. directly instead of
    calling the modules, and so would skip their adapters."""
    parts = name.split(".")
    return any(
        isinstance(model.get_submodule(".".join(parts[:i])), nn.TransformerEncoderLayer)
        for i in range(len(parts))  # "" is the model itself
    )


def inject(model: nn.Module, config: FlexiLoraConfig, router: Router | None = None) -> nn.Module:
    """Replace every ``nn.Linear`` that ``config.target_modules`` matches by a
    ``FlexiLoraLinear`` (in place) and freeze all base parameters.

    Returns ``model``. Raises ``ConfigError`` when nothing matched, listing linear layers
    that could have been named, or when a match is a layer whose forward torch never calls
    (``out_proj`` of an ``nn.MultiheadAttention``), and ``FlexispeechError`` if the model
    already has adapters. Layers inside torch's ``nn.TransformerEncoderLayer`` get a no-op
    forward pre-hook: torch skips that layer's eval-mode fast path (which reads the weights
    directly, bypassing the adapter) when any submodule has a hook.
    """
    if any(STATE_ATTR in m.__dict__ for m in model.modules()):
        raise FlexispeechError("model already has a Flexi-LoRA adapter: call flexispeech.remove(model) first")
    linear_names = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    skipped = _unwrappable(model, linear_names)
    targets = [name for name in linear_names if config.matches(name)]
    never_called = [name for name in targets if name in skipped]
    if never_called:
        raise ConfigError(
            f"target_modules {config.target_modules!r} match {never_called[:3]}: the output projection of a "
            "torch nn.MultiheadAttention, whose forward reads its weight directly, so an adapter there would "
            "never run; adapt other layers (e.g. linear1, linear2)"
        )
    if not targets:
        examples = sorted({name.rpartition(".")[2] for name in linear_names if name not in skipped})[:12]
        raise ConfigError(
            f"target_modules {config.target_modules!r} matched no nn.Linear module; "
            f"linear layer names in this model include {examples}"
        )
    state = FlexiState(config=config, slot=RankSlot())
    for name, param in model.named_parameters():
        state.requires_grad[name] = param.requires_grad
        param.requires_grad_(False)
    for name in targets:
        layer = FlexiLoraLinear(model.get_submodule(name), config, state.slot)
        if _inside_torch_fast_path(model, name):
            layer.register_forward_pre_hook(_keep_module_path)
        _set_submodule(model, name, layer)
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
    owner = state_owner(model)
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
    owner = state_owner(model)
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


def set_default_rank(model: nn.Module, rank: int) -> None:
    """The rank used outside any ``use_ranks`` block (``r_max`` after ``inject``)."""
    state = get_state(model)
    check_ranks(state.config, [rank])
    for _, layer in flexi_layers(model):
        layer.default_rank = int(rank)


def set_compute_path(model: nn.Module, path: str) -> None:
    """Choose how mixed-rank batches are computed (one of ``COMPUTE_PATHS``; see
    ``flexispeech.lora.kernels``)."""
    if path not in COMPUTE_PATHS:
        raise ConfigError(f"compute path must be one of {list(COMPUTE_PATHS)}, got {path!r}")
    for _, layer in flexi_layers(model):
        layer.compute_path = path


def set_static_path(model: nn.Module, enabled: bool = True) -> None:
    """Put every Flexi-LoRA layer of ``model`` on the graph-safe ``static`` path (or back
    to ``auto`` with ``enabled=False``).

    Use it to capture a training or inference step with ``torch.cuda.CUDAGraph``: enter
    ``use_ranks(model, ranks)`` with a device tensor *before* the capture (it validates
    the ranks with one host sync) and ``ranks.copy_(new)`` before each replay (new ranks
    must come from the configured set; the graph does not check them). The merged fast
    path is not taken on this path (choosing it needs the ranks on the host).
    """
    set_compute_path(model, "static" if enabled else "auto")


def merge_for_inference(model: nn.Module, rank: int) -> None:
    """``merge_for_inference(rank)`` on every Flexi-LoRA layer of ``model``: batches all at
    ``rank`` then cost what the base model costs; the adapters stay intact."""
    check_ranks(get_state(model).config, [rank])
    for _, layer in flexi_layers(model):
        layer.merge_for_inference(rank)


def unmerge(model: nn.Module) -> None:
    """Undo ``merge_for_inference`` on every Flexi-LoRA layer of ``model``."""
    for _, layer in flexi_layers(model):
        layer.unmerge()


def attach_router(model: nn.Module, router: Router | None) -> None:
    """Attach ``router`` to the model: it is saved with the adapter and used by ``route``."""
    get_state(model).router = router


def get_router(model: nn.Module) -> Router | None:
    """The attached router, or ``None``."""
    return get_state(model).router


def serving_router(model: nn.Module, rank: int | None = None) -> Router | None:
    """The router that picks ``model``'s ranks at inference, the one chain that file
    transcription, streaming and evaluation share: a fixed ``rank`` if one is given, else
    the adapter's saved router, else every row at the adapter's top rank (r_max); ``None``
    for a model without an adapter (the base model)."""
    from flexispeech.lora.router import FixedRouter

    if not any(STATE_ATTR in m.__dict__ for m in model.modules()):
        return None
    if rank is not None:
        check_ranks(get_state(model).config, [rank])
        return FixedRouter(rank)
    saved = get_router(model)
    return saved if saved is not None else FixedRouter(get_state(model).config.r_max)


def route(model: nn.Module, signals: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Ranks [batch] for a batch of complexity signals, from the attached router."""
    router = get_router(model)
    if router is None:
        raise FlexispeechError("no router attached to the model: use attach_router(model, router)")
    return router(signals)


def adapter_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The trainable adapter parameters (lora_A and lora_B of every layer)."""
    return [p for _, layer in flexi_layers(model) for p in (layer.lora_A, layer.lora_B)]
