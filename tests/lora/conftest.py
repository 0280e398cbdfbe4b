"""Small models with adapters whose B is non-zero (a fresh adapter is the identity)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from flexispeech import FlexiLoraConfig, inject
from flexispeech.lora.inject import flexi_layers


class TinyNet(nn.Module):
    """Two adapted projections around a non-linearity, [N, T, 6] -> [N, T, 5]."""

    def __init__(self) -> None:
        super().__init__()
        self.q_proj = nn.Linear(6, 7)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(7, 5)
        self.head = nn.Linear(5, 5)  # not targeted

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.fc2(self.act(self.q_proj(x))))


def randomize_adapters(model: nn.Module, seed: int = 0) -> None:
    """Give every adapter non-zero A and B so that ranks change the output."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, layer in flexi_layers(model):
            layer.lora_A.copy_(torch.randn(layer.lora_A.shape, generator=gen))
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=gen) * 0.1)


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
