"""Serve an adapter at a fraction of its strength: every rank's scale times ``strength``.

A fine-tuned model interpolated part of the way back to the pretrained one keeps most of
its in-domain gain and loses less out of domain (WiSE-FT, Wortsman et al., 2022). For LoRA
the interpolation is exact and free: ``W + s * B A`` with ``s`` scaled, nothing merged or
retrained. In the GPU study an adapter trained on synthetic voices doubled the base model's
WER on real recordings at full strength (15.1 % against 6.3 % at rank 16) and added 1.4
points at half strength (recipes/synthetic/RESULTS.md, eighth lease).

``modules`` restricts the change to the adapted modules whose names match a regex: their
``B`` matrices are multiplied instead (``W + (s B) A`` is the same interpolation for those
modules alone), and a strength of 0 switches them off, e.g. the decoder's adapters of an
adapter trained on encoder and decoder: which part of an adapter helps or harms a domain,
measured without retraining.
"""

from __future__ import annotations

import math
import re
from dataclasses import replace
from pathlib import Path

from safetensors.torch import load_file

from flexispeech.atomic import existing_dir
from flexispeech.errors import ConfigError
from flexispeech.lora.config import FlexiLoraConfig
from flexispeech.lora.io import CONFIG_NAME, WEIGHTS_NAME, read_adapter_config, rewrite_adapter


def scaled_config(config: FlexiLoraConfig, strength: float) -> FlexiLoraConfig:
    """``config`` with every rank's scale multiplied by ``strength`` (kept in ``rank_scales``;
    ``metadata["strength"]`` multiplies too, so a twice-scaled adapter says so)."""
    if not 0.0 < strength < math.inf:  # NaN fails both comparisons
        raise ConfigError(f"strength must be a finite number > 0, got {strength}")
    scales = {r: config.scale(r) * strength for r in config.ranks if r > 0}
    meta = dict(config.metadata)
    meta["strength"] = round(float(meta.get("strength", 1.0)) * strength, 6)
    return replace(config, rank_scales=scales, metadata=meta)


def save_strength(
    directory: str | Path, strength: float, out: str | Path, modules: str | None = None
) -> Path:
    """Write the saved adapter ``directory`` at ``strength`` into ``out`` (weights and router
    copied, the config's scales multiplied; replaced whole and atomically). No model is loaded.

    With ``modules`` (a regex searched in each adapted module's name) only the matching
    modules change: their ``lora_B`` weights times ``strength`` (>= 0), recorded in the
    config's ``metadata["module_strengths"]``.
    """
    directory = existing_dir(directory)
    target = Path(out)
    if target.resolve() == directory.resolve():
        raise ConfigError(f"{out}: write the scaled adapter to another directory than {directory}")
    data = read_adapter_config(directory)
    if modules is None:
        data["config"] = scaled_config(FlexiLoraConfig.from_dict(data["config"]), strength).to_dict()
        return rewrite_adapter(directory, target, {CONFIG_NAME: data})
    if not 0.0 <= strength < math.inf:
        raise ConfigError(f"strength must be a finite number >= 0 with --modules, got {strength}")
    try:
        pattern = re.compile(modules)
    except re.error as err:
        raise ConfigError(f"--modules {modules!r}: not a regular expression ({err})") from None
    weights = load_file(str(directory / WEIGHTS_NAME))
    names = sorted({k.rsplit(".", 1)[0] for k in weights if k.endswith(".lora_B")})
    hit = [n for n in names if pattern.search(n)]
    if not hit:
        raise ConfigError(
            f"--modules {modules!r} matches none of the adapter's {len(names)} modules (e.g. {names[0]})"
        )
    for name in hit:
        weights[f"{name}.lora_B"] = weights[f"{name}.lora_B"] * strength
    meta = data["config"].setdefault("metadata", {})
    meta["module_strengths"] = {
        **meta.get("module_strengths", {}),
        modules: {"strength": strength, "modules": len(hit)},
    }
    return rewrite_adapter(directory, target, {CONFIG_NAME: data}, weights=weights)
