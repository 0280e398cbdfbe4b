"""Adapter files: our own format (PEFT-style layout) and an export to a plain PEFT adapter.

Directory layout written by ``save_adapter``::

    adapter_config.json        {"format": "flexispeech-adapter", "config": ..., "layers": ...}
    adapter_model.safetensors  "<layer>.lora_A" [r_max, in], "<layer>.lora_B" [out, r_max]
    router.json                the attached router (when there is one)

``save_adapter`` writes the directory whole into a temporary one and swaps it in
(:func:`flexispeech.atomic.replace_dir`), so an interrupted save leaves the previous
adapter or the new one, never weights of one save beside the config of another.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from flexispeech.atomic import existing_dir, replace_dir, write_file, write_text
from flexispeech.errors import ConfigError, FlexispeechError
from flexispeech.lora.config import FlexiLoraConfig
from flexispeech.lora.inject import attach_router, flexi_layers, inject, remove
from flexispeech.lora.ranks import RankError, check_ranks, get_state
from flexispeech.lora.router import Router
from flexispeech.version import __version__

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
ROUTER_NAME = "router.json"
FORMAT = "flexispeech-adapter"
ADAPTER_FILES = (CONFIG_NAME, WEIGHTS_NAME, ROUTER_NAME)


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as indented JSON to ``path`` atomically."""
    write_text(path, json.dumps(data, indent=2) + "\n")


def save_adapter(model: nn.Module, directory: str | Path) -> Path:
    """Save the adapter weights, its config and the attached router into ``directory``.

    The directory is the adapter's own and is replaced whole, atomically: one that holds
    files other than an adapter's is refused rather than emptied.
    """
    state = get_state(model)
    directory = Path(directory)
    check_own_dir(directory)
    layers = flexi_layers(model)
    tensors: dict[str, torch.Tensor] = {}
    for name, layer in layers:
        tensors[f"{name}.lora_A"] = layer.lora_A.detach().contiguous().cpu()
        tensors[f"{name}.lora_B"] = layer.lora_B.detach().contiguous().cpu()
    with replace_dir(directory) as tmp:  # a router of an earlier save goes with the old directory
        save_file(tensors, str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
        if state.router is not None:
            write_json(tmp / ROUTER_NAME, state.router.to_dict())
        write_json(
            tmp / CONFIG_NAME,
            {
                "format": FORMAT,
                "flexispeech_version": __version__,
                "config": state.config.to_dict(),
                "layers": {name: [layer.in_features, layer.out_features] for name, layer in layers},
            },
        )
    return directory


def read_adapter_config(directory: str | Path) -> dict[str, Any]:
    """The parsed ``adapter_config.json`` of a saved adapter, validated."""
    path = existing_dir(directory) / CONFIG_NAME
    if not path.parent.is_dir():
        raise FlexispeechError(f"{directory}: no such adapter directory")
    if not path.is_file():
        raise FlexispeechError(f"{directory}: not a flexispeech adapter (no {CONFIG_NAME})")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path}: invalid JSON ({err})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise ConfigError(f"{path}: not a flexispeech adapter config (format {found!r})")
    # A damaged config must not load as another adapter: without its ranks the defaults
    # would serve ranks the weights were never trained at.
    config = data.get("config")
    if not isinstance(config, dict) or "ranks" not in config:
        raise ConfigError(f"{path}: no adapter 'config' with its 'ranks' (a damaged adapter config?)")
    try:
        FlexiLoraConfig.from_dict(config)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
    return data


def read_lora_config(directory: str | Path) -> FlexiLoraConfig:
    """The ``FlexiLoraConfig`` of a saved adapter (``read_adapter_config``, validated)."""
    return FlexiLoraConfig.from_dict(read_adapter_config(directory)["config"])


def adapter_audio_ctx(directory: str | Path) -> int | None:
    """The Whisper encoder window (positions of 20 ms) a saved adapter was trained with: its
    ``audio_ctx`` metadata, the full 1500 (30 s) when the run kept the whole window, None
    for an adapter of another family (no window)."""
    from flexispeech.models.whisper import FULL_POSITIONS

    metadata = read_adapter_config(directory)["config"].get("metadata", {})
    if metadata.get("family", "whisper") != "whisper":
        return None
    return int(metadata.get("audio_ctx") or FULL_POSITIONS)


def serving_window(requested: int | None, adapter: str | Path | None, command: str) -> int | None:
    """The encoder window (positions) a command serves with: ``requested`` (its
    ``--audio-ctx``) when given, else the adapter's training window, else None (the model's
    own window: 30 s for a base model).

    One line goes to stderr when ``requested`` differs from the adapter's window: the
    adapter was trained on what a window of that length hears, and is served on another.
    """
    from flexispeech.models.whisper import POSITIONS_PER_SECOND as PER_S

    trained = adapter_audio_ctx(adapter) if adapter is not None else None
    if requested is None or trained is None:
        return trained if requested is None else requested
    if requested != trained:
        print(
            f"warning: {command}: --audio-ctx {requested} ({requested / PER_S:g} s) differs from the window the adapter "
            f"was trained with ({trained} = {trained / PER_S:g} s)",
            file=sys.stderr,
        )
    return requested


def load_adapter(model: nn.Module, directory: str | Path) -> nn.Module:
    """Load a saved adapter into ``model``: injects it with the saved config when the model
    has no adapter yet, and checks every layer name and shape (a mismatch names the layer
    and both shapes, e.g. an adapter saved for another base model). Returns ``model``.

    Nothing is changed unless everything checks: into a model with an adapter already, the
    saved one must have its ranks and scales (else its weights would run at the other's
    scales), and a load that fails takes out the adapter it injected."""
    directory = existing_dir(directory)  # the previous save, when a save was killed between its renames
    data = read_adapter_config(directory)
    config = FlexiLoraConfig.from_dict(data["config"])
    weights_path = directory / WEIGHTS_NAME
    if not weights_path.is_file():
        raise FlexispeechError(f"{directory}: adapter has no {WEIGHTS_NAME}")
    try:
        tensors = load_file(str(weights_path))
    except Exception as err:  # safetensors raises its own error types for corrupt files
        raise FlexispeechError(f"{weights_path}: cannot read adapter weights ({err})") from None
    try:
        state = get_state(model)
    except FlexispeechError:
        state = None
    if state is not None:
        differ = [k for k in SCALE_FIELDS if getattr(state.config, k) != getattr(config, k)]
        if differ:
            raise ConfigError(
                f"{directory}: the model's adapter differs in {', '.join(differ)} "
                f"({', '.join(f'{getattr(state.config, k)!r} here, {getattr(config, k)!r} saved' for k in differ)}); "
                "load it into a model without an adapter (flexispeech.remove(model) first)"
            )
    else:
        inject(model, config)
    try:
        layers = dict(flexi_layers(model))
        _check_weights(directory, data, tensors, layers)
        router = _saved_router(directory)
        if router is not None:
            try:  # checked here: at serving time it would read as a --rank the user gave
                check_ranks(get_state(model).config, list(router.ranks))
            except RankError as err:
                raise ConfigError(f"{directory / ROUTER_NAME}: the saved router's {err}") from None
    except Exception:
        if state is None:  # the adapter this call injected goes again: the model as it was
            remove(model)
        raise
    with torch.no_grad():
        for name, layer in layers.items():
            layer.lora_A.copy_(tensors[f"{name}.lora_A"])
            layer.lora_B.copy_(tensors[f"{name}.lora_B"])
    if router is not None:
        attach_router(model, router)
    return model


SCALE_FIELDS = ("ranks", "alpha", "scaling", "rank_scales")
"""What a saved adapter must share with a model's adapter to be loaded into it: the
fields that set each rank's scale (the weights' shapes follow from the ranks)."""


def _check_weights(
    directory: Path, data: dict[str, Any], tensors: dict[str, torch.Tensor], layers: dict[str, nn.Module]
) -> None:
    """Every adapted layer of the model has weights of its shapes in the saved adapter,
    and the adapter no layer the model lacks (else a FlexispeechError naming them)."""
    missing = sorted(set(data["layers"]) - set(layers))
    if missing:
        raise FlexispeechError(
            f"{directory}: adapter layers not in this model: {missing[:5]} (saved for another base model?)"
        )
    for name, layer in layers.items():
        if name not in data["layers"]:
            raise FlexispeechError(f"{directory}: adapter has no weights for layer {name}")
        for part in ("lora_A", "lora_B"):
            src, dst = tensors.get(f"{name}.{part}"), getattr(layer, part)
            if src is None:
                raise FlexispeechError(f"{directory}: adapter has no weights for {name}.{part}")
            if src.shape != dst.shape:
                raise FlexispeechError(
                    f"{directory}: {name}.{part} has shape {tuple(src.shape)} but the model needs "
                    f"{tuple(dst.shape)} (adapter saved for another base model?)"
                )


def _saved_router(directory: Path) -> Router | None:
    """The router in ``directory/router.json``, or None without one."""
    path = directory / ROUTER_NAME
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path}: invalid JSON ({err})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a router is a JSON object with its 'type', got a {type(data).__name__}")
    try:
        return Router.from_dict(data)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None


def read_router(directory: str | Path) -> Router:
    """The router a saved adapter serves with: its ``router.json``, or every row at the
    adapter's top rank when it has none (a static adapter; ``serving_router``'s default)."""
    from flexispeech.lora.router import FixedRouter

    directory = existing_dir(directory)
    saved = _saved_router(directory)
    if saved is not None:
        return saved
    return FixedRouter(read_lora_config(directory).r_max)


def save_router(directory: str | Path, router: Router, out: str | Path | None = None) -> Path:
    """Give the saved adapter ``directory`` a new router, without loading any model: in
    place, or in a copy at ``out`` (weights and config copied, replaced whole and atomically).
    Every rank the router serves must be one the adapter has (rank 0, the base, always is)."""
    directory = existing_dir(directory)
    config = read_lora_config(directory)
    check_ranks(config, list(router.ranks))
    return rewrite_adapter(directory, out if out is not None else directory, {ROUTER_NAME: router.to_dict()})


def check_own_dir(directory: Path, source: Path | None = None) -> None:
    """Refuse to write an adapter into ``directory`` when replacing it would lose something:
    files that are not an adapter's (a user's folder, a run's parent directory), or the
    adapter ``source`` being read (``directory`` holding it). The adapter directory is
    replaced whole, so anything else in it would be deleted."""
    if source is not None and directory.resolve() in source.resolve().parents:
        raise FlexispeechError(
            f"{directory}: holds the adapter {source} being read; write the new adapter into a directory of its own"
        )
    foreign = (
        sorted(p.name for p in directory.iterdir() if p.name not in ADAPTER_FILES)
        if directory.is_dir()
        else []
    )
    if foreign:
        raise FlexispeechError(
            f"{directory}: holds files that are not an adapter's ({', '.join(foreign[:5])}); "
            "write the adapter into a directory of its own"
        )


def rewrite_adapter(
    directory: str | Path,
    out: str | Path,
    replace: dict[str, Any],
    weights: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write the saved adapter ``directory`` into ``out`` (which may be ``directory``) with
    the JSON files named in ``replace`` (e.g. ``router.json``) given new contents, the
    weights replaced by ``weights`` when given, and every other adapter file copied;
    replaced whole and atomically. Returns ``out``.

    Raises:
        FlexispeechError: ``out`` holds files that are not an adapter's, or holds
            ``directory`` (``check_own_dir``): replacing it would delete them."""
    directory, target = existing_dir(directory), Path(out)
    check_own_dir(target, directory)
    with replace_dir(target) as tmp:
        for name in ADAPTER_FILES:
            if name in replace or (name == WEIGHTS_NAME and weights is not None):
                continue
            if name == ROUTER_NAME and not (directory / name).is_file():
                continue  # config and weights must be there (copy2 says so); a router may not
            shutil.copy2(directory / name, tmp / name)
        if weights is not None:
            save_file(weights, str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
        for name, data in replace.items():
            write_json(tmp / name, data)
    return target


PEFT_FILES = (CONFIG_NAME, WEIGHTS_NAME, "README.md")
"""What a PEFT LoRA directory holds (PEFT's ``save_pretrained`` adds a model card)."""


def _check_peft_dir(directory: Path) -> None:
    """``export_peft`` writes into ``directory`` file by file: refused when it holds anything
    but an earlier PEFT LoRA export (a flexispeech adapter's config and weights would be
    overwritten with PEFT's, a user's files mixed with the export)."""
    if not directory.is_dir() or not any(directory.iterdir()):
        return
    names = sorted(p.name for p in directory.iterdir())
    try:
        peft_type = json.loads((directory / CONFIG_NAME).read_text()).get("peft_type")
    except (OSError, ValueError, AttributeError):
        peft_type = None
    if peft_type != "LORA" or not set(names) <= set(PEFT_FILES):
        raise FlexispeechError(
            f"{directory}: holds {', '.join(names[:5])}, not a PEFT LoRA export; export into an empty or new directory"
        )


def export_peft(
    model: nn.Module, directory: str | Path, rank: int, base_model_name_or_path: str | None = None
) -> Path:
    """Write a standard PEFT LoRA adapter at fixed ``rank``.

    ``peft.PeftModel.from_pretrained(base, directory)`` then reproduces this model's
    outputs under ``use_ranks(model, rank)``: the weights are ``A[:rank]``, ``B[:, :rank]``
    and ``lora_alpha`` is chosen so that PEFT's ``alpha / r`` equals our ``scale(rank)``.
    """
    from peft import LoraConfig  # imported here: peft is only needed for this export

    state = get_state(model)
    check_ranks(state.config, [rank])
    if rank == 0:
        raise ConfigError("export_peft: rank 0 is the base model; PEFT adapters need rank >= 1")
    directory = Path(directory)
    _check_peft_dir(directory)
    directory.mkdir(parents=True, exist_ok=True)
    layers = flexi_layers(model)
    peft_config = LoraConfig(
        r=rank,
        lora_alpha=state.config.scale(rank) * rank,
        target_modules=[name for name, _ in layers],
        lora_dropout=state.config.dropout,
        bias="none",
        base_model_name_or_path=base_model_name_or_path or state.config.metadata.get("base_model"),
    )
    peft_config.save_pretrained(str(directory))
    tensors = {}
    for name, layer in layers:
        tensors[f"base_model.model.{name}.lora_A.weight"] = layer.lora_A[:rank].detach().contiguous().cpu()
        tensors[f"base_model.model.{name}.lora_B.weight"] = layer.lora_B[:, :rank].detach().contiguous().cpu()
    write_file(directory / WEIGHTS_NAME, lambda tmp: save_file(tensors, str(tmp), metadata={"format": "pt"}))
    return directory
