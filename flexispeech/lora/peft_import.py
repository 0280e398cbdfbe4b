"""Start from a trained PEFT LoRA: turn it into a Flexi-LoRA adapter with nested ranks.

A PEFT LoRA layer adds ``ΔW = s · B_p A_p`` ([out, in], rank ``r``, ``s = lora_alpha / r``,
or ``lora_alpha / √r`` with rsLoRA). Its SVD ``ΔW = U Σ Vᵀ`` orders the ``r`` rank-one
components by importance, so the first ``k`` of them are the best rank-``k`` approximation
of ``ΔW`` (Eckart–Young). Written as nested factors

    A = diag(√(Σ / c)) Vᵀ  [r, in],    B = U diag(√(Σ / c))  [out, r]

and served with the same scale ``c`` at every rank (``scaling="nested"``), rank ``r`` gives
``c · B A = ΔW`` exactly and every lower rank ``k`` gives the best rank-``k`` truncation.
Any other scaling would rescale the truncations (``standard`` multiplies rank ``k`` by
``r / k``), so nested is the one that keeps them the best ones. The singular values are
split evenly between ``A`` and ``B``, so neither factor dwarfs the other when training
continues. ``c`` is PEFT's own scale, so the numbers a PEFT user knows (alpha, r) stay.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from flexispeech.errors import ConfigError, FlexispeechError
from flexispeech.lora.config import FlexiLoraConfig
from flexispeech.lora.inject import flexi_layers, inject
from flexispeech.lora.io import FORMAT

PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
PREFIX = "base_model.model."  # PEFT's key prefix: PeftModel.base_model (LoraModel).model
# Options of a PEFT LoRA whose update is not B @ A on an nn.Linear; refused with their name.
UNSUPPORTED = {
    "use_dora": "DoRA rescales the merged weight per column, which is not a low-rank update",
    "fan_in_fan_out": "fan_in_fan_out (GPT-2 Conv1D) layers are not nn.Linear",
    "lora_bias": "a trained bias on lora_B is not a low-rank update",
}


def read_peft_adapter(
    peft_dir: str | Path,
) -> tuple[dict[str, Any], dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    """The PEFT config (parsed JSON) and ``layer name -> (A [r, in], B [out, r])`` of a
    saved PEFT LoRA; names are relative to the base model. Unsupported options, trained
    biases and ``modules_to_save`` raise a ``ConfigError`` naming them."""
    peft_dir = Path(peft_dir)
    config_path = peft_dir / PEFT_CONFIG
    if not config_path.is_file():
        raise FlexispeechError(f"{peft_dir}: not a PEFT adapter (no {PEFT_CONFIG})")
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"{config_path}: invalid JSON ({err})") from None
    if not isinstance(config, dict) or config.get("peft_type") != "LORA":
        found = (config.get("format") or config.get("peft_type")) if isinstance(config, dict) else None
        if found == FORMAT:
            what = "a flexispeech adapter: load it with flexispeech.load_adapter"
        else:
            what = f"a {found!r} adapter" if found else "no peft_type"
        raise ConfigError(f"{config_path}: {what}; only PEFT LoRA can be imported")
    for key, why in UNSUPPORTED.items():
        if config.get(key):
            raise ConfigError(f"{config_path}: {key}=true cannot be imported ({why})")
    if config.get("modules_to_save"):
        raise ConfigError(
            f"{config_path}: modules_to_save {config['modules_to_save']} are fully trained modules, not LoRA"
        )
    tensors = _load_weights(peft_dir)
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        name = key[len(PREFIX) :] if key.startswith(PREFIX) else key
        for part in ("lora_A", "lora_B"):
            if name.endswith(f".{part}.weight"):
                pairs.setdefault(name[: -len(f".{part}.weight")], {})[part] = value
                break
        else:
            raise ConfigError(
                f"{peft_dir}: tensor {key!r} is not a LoRA A/B weight of a linear layer (bias or embedding?)"
            )
    layers = {}
    for name, pair in sorted(pairs.items()):
        A, B = pair.get("lora_A"), pair.get("lora_B")
        if A is None or B is None or A.dim() != 2 or B.dim() != 2 or A.shape[0] != B.shape[1]:
            raise ConfigError(
                f"{peft_dir}: layer {name} has no matching lora_A [r, in] / lora_B [out, r] pair"
            )
        layers[name] = (A, B)
    if not layers:
        raise ConfigError(f"{peft_dir}: the adapter holds no LoRA weights")
    return config, layers


def _load_weights(peft_dir: Path) -> dict[str, torch.Tensor]:
    for name in PEFT_WEIGHTS:
        path = peft_dir / name
        if path.is_file():
            try:
                if name.endswith(".safetensors"):
                    from safetensors.torch import load_file

                    return load_file(str(path))
                return torch.load(path, map_location="cpu", weights_only=True)
            except Exception as err:  # safetensors and torch raise their own types for corrupt files
                raise FlexispeechError(f"{path}: cannot read adapter weights ({err})") from None
    raise FlexispeechError(f"{peft_dir}: PEFT adapter has no {' or '.join(PEFT_WEIGHTS)}")


def peft_scale(config: dict[str, Any], layer: str, r: int) -> float:
    """PEFT's scale of one layer: its ``lora_alpha`` (``alpha_pattern`` resolved as PEFT
    resolves it) over ``r``, or over ``√r`` with rsLoRA."""
    from peft.utils.other import get_pattern_key  # PEFT's own pattern rule, not a copy of it

    patterns = config.get("alpha_pattern") or {}
    alpha = float(patterns.get(get_pattern_key(patterns.keys(), layer), config["lora_alpha"]))
    return alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r


def nested_factors(
    A: torch.Tensor, B: torch.Tensor, scale: float, target_scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """SVD-ordered factors of ``ΔW = scale · B @ A``: ``(A' [r, in], B' [out, r])`` with
    ``target_scale · B'[:, :k] @ A'[:k]`` the best rank-``k`` approximation of ``ΔW`` for
    every ``k``, and ``ΔW`` itself at ``k = r``. Float64 inside; float32 out.

    The SVD of the [out, in] product is taken through QR of the thin factors,
    O((out + in)·r²) instead of O(out·in·min(out, in)).
    """
    a = A.double()
    b = B.double() * scale
    q_b, r_b = torch.linalg.qr(b)  # [out, r], [r, r]
    q_a, r_a = torch.linalg.qr(a.T)  # [in, r], [r, r]
    u, s, vh = torch.linalg.svd(r_b @ r_a.T)  # the r x r core
    root = torch.sqrt(s / target_scale)
    new_a = root[:, None] * (vh @ q_a.T)
    new_b = (q_b @ u) * root[None, :]
    return new_a.float(), new_b.float()


def default_ranks(r: int) -> tuple[int, ...]:
    """0 and ``r`` halved while it stays a whole number >= 2: 16 -> (0, 2, 4, 8, 16)."""
    ranks = [r]
    while ranks[0] % 2 == 0 and ranks[0] // 2 >= 2:
        ranks.insert(0, ranks[0] // 2)
    return (0, *ranks)


def from_peft(
    model: nn.Module, peft_dir: str | Path, ranks: Sequence[int] | None = None, router: Any = None
) -> nn.Module:
    """Inject a Flexi-LoRA adapter into ``model`` made from the PEFT LoRA in ``peft_dir``.

    Args:
        model: the base model the PEFT adapter was trained on (no adapter injected yet).
        peft_dir: a PEFT LoRA directory (``adapter_config.json`` + ``adapter_model.safetensors``).
        ranks: the allowed ranks; the largest must be at least the PEFT rank ``r``
            (components above a layer's PEFT rank start as a fresh LoRA: ``B = 0``).
            Default: ``default_ranks(r)``.
        router: attached to the model (saved with the adapter by ``save_adapter``).

    Returns ``model``: under ``use_ranks(model, ranks[-1])`` it computes what
    ``peft.PeftModel.from_pretrained(base, peft_dir)`` computes (up to float rounding),
    and each lower rank is the best truncation of every layer's update.
    """
    config, layers = read_peft_adapter(peft_dir)
    r = max(A.shape[0] for A, _ in layers.values())
    ranks = tuple(ranks) if ranks is not None else default_ranks(r)
    if not ranks or max(ranks) < r:
        raise ConfigError(f"ranks {list(ranks)}: the largest must be >= the PEFT rank {r} to reproduce it")
    base_r = int(config.get("r") or r)
    # Nested scaling with PEFT's own scale at its own rank r: alpha / r_max = s.
    target = float(config["lora_alpha"]) / (math.sqrt(base_r) if config.get("use_rslora") else base_r)
    flexi = FlexiLoraConfig(
        ranks=ranks,
        alpha=target * max(ranks),
        scaling="nested",
        target_modules=tuple(layers),
        dropout=float(config.get("lora_dropout") or 0.0),
        metadata={
            "base_model": config.get("base_model_name_or_path"),
            "imported_from": "peft",
            "peft_r": base_r,
        },
    )
    present = {name for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    missing = sorted(set(layers) - present)
    if missing:
        raise FlexispeechError(
            f"{peft_dir}: PEFT layers not linear layers of this model: {missing[:5]} (another base model?)"
        )
    for name, (A, B) in layers.items():  # checked before inject: a failed import leaves the model as it was
        linear = model.get_submodule(name)
        if A.shape[1] != linear.in_features or B.shape[0] != linear.out_features:
            raise FlexispeechError(
                f"{peft_dir}: {name} is [{B.shape[0]} x {A.shape[1]}] in the adapter but "
                f"[{linear.out_features} x {linear.in_features}] in the model (another base model?)"
            )
    inject(model, flexi, router=router)
    with torch.no_grad():
        for name, layer in flexi_layers(model):
            A, B = layers[name]
            new_a, new_b = nested_factors(
                A, B, peft_scale(config, name, A.shape[0]), flexi.scale(flexi.r_max)
            )
            k = new_a.shape[0]
            layer.lora_A[:k].copy_(new_a)
            layer.lora_B[:, :k].copy_(new_b)
            layer.lora_B[:, k:].zero_()  # already zero after inject; explicit because it is the promise
    return model
