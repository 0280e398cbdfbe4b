"""Serve an adapter at a fraction of its strength: every rank's scale times ``strength``.

A fine-tuned model interpolated part of the way back to the pretrained one keeps most of
its in-domain gain and loses less out of domain (WiSE-FT, Wortsman et al., 2022). For LoRA
the interpolation is exact and free: ``W + s * B A`` with ``s`` scaled, nothing merged or
retrained. In the GPU study an adapter trained on synthetic voices doubled the base model's
WER on real recordings at full strength (15.1 % against 6.3 % at rank 16) and added 1.4
points at half strength (recipes/synthetic/RESULTS.md, eighth lease).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from flexispeech.atomic import existing_dir
from flexispeech.errors import ConfigError
from flexispeech.lora.config import FlexiLoraConfig
from flexispeech.lora.io import CONFIG_NAME, read_adapter_config, rewrite_adapter


def scaled_config(config: FlexiLoraConfig, strength: float) -> FlexiLoraConfig:
    """``config`` with every rank's scale multiplied by ``strength`` (kept in ``rank_scales``;
    ``metadata["strength"]`` multiplies too, so a twice-scaled adapter says so)."""
    if not 0.0 < strength:
        raise ConfigError(f"strength must be > 0, got {strength}")
    scales = {r: config.scale(r) * strength for r in config.ranks if r > 0}
    meta = dict(config.metadata)
    meta["strength"] = round(float(meta.get("strength", 1.0)) * strength, 6)
    return replace(config, rank_scales=scales, metadata=meta)


def save_strength(directory: str | Path, strength: float, out: str | Path) -> Path:
    """Write the saved adapter ``directory`` at ``strength`` into ``out`` (weights and router
    copied, the config's scales multiplied; replaced whole and atomically). No model is loaded."""
    directory = existing_dir(directory)
    target = Path(out)
    if target.resolve() == directory.resolve():
        raise ConfigError(f"{out}: write the scaled adapter to another directory than {directory}")
    data = read_adapter_config(directory)
    data["config"] = scaled_config(FlexiLoraConfig.from_dict(data["config"]), strength).to_dict()
    return rewrite_adapter(directory, target, {CONFIG_NAME: data})
