"""``routing.json`` of a ``--per-rank`` export: the router and which directory serves each rank.

A deployment loads one merged model per rank (each runs at the base model's speed, with
no adapter arithmetic), computes the complexity signals of a request, and sends it to the
model of the rank the router gives::

    {"format": "flexispeech-routing", "to": "ct2", "default_rank": 8,
     "router": {...ThresholdRouter.to_dict()...} | null,
     "models": {"0": "rank-0", "2": "rank-2", "8": "rank-8"}}

Without a router every request goes to ``default_rank`` (the adapter's largest rank).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from flexispeech.errors import ConfigError, FlexispeechError
from flexispeech.lora.io import write_json
from flexispeech.lora.router import router_from_dict

ROUTING_NAME = "routing.json"
FORMAT = "flexispeech-routing"


def rank_dir_name(rank: int) -> str:
    """The subdirectory of a per-rank export that holds the model of ``rank``."""
    return f"rank-{rank}"


def write_routing(directory: Path, ranks: list[int], router: Any, default_rank: int, to: str) -> Path:
    """Write ``directory/routing.json`` for the models ``directory/rank-<r>`` of ``ranks``."""
    data = {
        "format": FORMAT,
        "to": to,
        "default_rank": int(default_rank),
        "router": router.to_dict() if router is not None else None,
        "models": {str(r): rank_dir_name(r) for r in ranks},
    }
    path = directory / ROUTING_NAME
    write_json(path, data)
    return path


@dataclass
class RoutedModels:
    """A per-rank export read back: ``models`` maps each rank to its model directory."""

    models: dict[int, Path]
    router: Any
    default_rank: int

    def ranks(self, signals: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The rank of each request, [batch], from its signals (name -> [batch] floats)."""
        if self.router is not None:
            return self.router(signals)
        n = len(next(iter(signals.values()))) if signals else 1
        return torch.full((n,), self.default_rank, dtype=torch.long)

    def paths(self, signals: Mapping[str, torch.Tensor]) -> list[Path]:
        """The model directory that serves each request, in order."""
        return [self.models[int(r)] for r in self.ranks(signals)]


def read_routing(directory: str | Path) -> RoutedModels:
    """Read the ``routing.json`` of a per-rank export in ``directory``."""
    directory = Path(directory)
    path = directory / ROUTING_NAME
    if not path.is_file():
        raise FlexispeechError(f"{directory}: not a per-rank export (no {ROUTING_NAME})")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path}: invalid JSON ({err})") from None
    if data.get("format") != FORMAT:
        raise ConfigError(f"{path}: not a flexispeech routing file (format {data.get('format')!r})")
    router = router_from_dict(data["router"]) if data.get("router") else None
    models = {int(r): directory / sub for r, sub in data["models"].items()}
    return RoutedModels(models=models, router=router, default_rank=int(data["default_rank"]))
