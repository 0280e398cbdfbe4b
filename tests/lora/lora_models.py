"""Small models for the lora tests, importable by a name no other test folder uses
(``from conftest import ...`` picks whichever conftest was imported first)."""

from __future__ import annotations

import torch
from torch import nn

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
