"""What a run builds from its config before training: the model, the adapter config, the
learning-rate schedule."""

from __future__ import annotations

from typing import Any

import torch

from flexispeech.errors import ConfigError
from flexispeech.lora.config import FlexiLoraConfig
from flexispeech.models.family import get_family
from flexispeech.models.family import load_model as load_family_model
from flexispeech.models.whisper_prefix import frozen_prefix_pattern
from flexispeech.training.config import RunConfig


def lr_schedule(cfg: RunConfig, optimizer: torch.optim.Optimizer) -> Any:
    """The warm-up then ``train.schedule`` learning-rate schedule of ``optimizer``."""
    from transformers import get_scheduler

    names = {"linear": "linear", "cosine": "cosine", "constant": "constant_with_warmup"}
    if cfg.train.schedule not in names:
        raise ConfigError(f"train.schedule: expected one of {sorted(names)}, got {cfg.train.schedule!r}")
    return get_scheduler(names[cfg.train.schedule], optimizer, cfg.train.warmup_steps, cfg.train.max_steps)


def load_model(cfg: RunConfig, device: str | torch.device = "cpu") -> tuple[Any, Any, Any]:
    """The run's family, base model and processor."""
    family = get_family(cfg.model.family)
    model, processor = load_family_model(family, cfg.model.source, str(device), cfg.model.audio_ctx)
    return family, model, processor


def adapter_config(cfg: RunConfig, family: Any) -> FlexiLoraConfig:
    """The FlexiLoraConfig of a run (with the facts needed to reload it in metadata)."""
    a = cfg.adapter
    targets: tuple[str, ...] | str = (
        a.target_modules
        if isinstance(a.target_modules, str)
        else tuple(a.target_modules or family.default_targets)
    )
    if cfg.model.cache_encoder_layers and not isinstance(targets, str):  # RunConfig refuses the str case
        targets = frozen_prefix_pattern(targets, cfg.model.cache_encoder_layers)
    return a.to_lora(
        target_modules=targets,
        metadata={
            "base_model": cfg.model.source,
            "family": cfg.model.family,
            "audio_ctx": cfg.model.audio_ctx,
            "run": cfg.name,
            "routing": cfg.routing.mode,
        },
    )
