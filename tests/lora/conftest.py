"""Small models with adapters whose B is non-zero (a fresh adapter is the identity)."""

from __future__ import annotations

import pytest
import torch
from lora_models import TinyNet, randomize_adapters

from flexispeech import FlexiLoraConfig, inject


@pytest.fixture
def config() -> FlexiLoraConfig:
    return FlexiLoraConfig(ranks=(0, 1, 2, 4), alpha=4.0, target_modules=("q_proj", "fc2"))


@pytest.fixture
def tiny(config: FlexiLoraConfig) -> TinyNet:
    torch.manual_seed(0)
    model = TinyNet()
    inject(model, config)
    randomize_adapters(model)
    return model
