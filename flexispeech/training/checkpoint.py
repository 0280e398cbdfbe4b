"""Training checkpoints: the adapter plus everything needed to continue bit for bit.

A checkpoint is a directory ``<output_dir>/checkpoint`` holding the adapter files
(``save_adapter``) and ``trainer_state.pt`` (step, data position, optimizer, scheduler,
RNG states). It is written as ``checkpoint.tmp`` and swapped in by renames, so a kill at
any moment leaves either the previous checkpoint or the new one, never a torn one.
"""

from __future__ import annotations

import os
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from flexispeech.errors import FlexispeechError
from flexispeech.lora.io import load_adapter, save_adapter

CHECKPOINT_DIR = "checkpoint"
STATE_NAME = "trainer_state.pt"


@dataclass
class TrainerState:
    """Where training stands: ``step`` optimizer steps done; the next micro-batch is
    number ``batch_in_epoch`` of epoch ``epoch``."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    examples_seen: int = 0
    train_time_s: float = 0.0
    rank_counts: dict[int, int] = field(default_factory=dict)


def rng_state() -> dict[str, Any]:
    """The global RNG states that training consumes (dropout, Python, NumPy)."""
    return {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])


def save_checkpoint(
    output_dir: Path,
    model: nn.Module,
    trainer: TrainerState,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    router_state: Any = None,
) -> Path:
    """Write the checkpoint atomically (temp dir, then renames) and return its path."""
    final = output_dir / CHECKPOINT_DIR
    tmp = output_dir / f"{CHECKPOINT_DIR}.tmp"
    old = output_dir / f"{CHECKPOINT_DIR}.old"
    shutil.rmtree(tmp, ignore_errors=True)
    save_adapter(model, tmp)
    torch.save(
        {
            "trainer": trainer.__dict__,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": rng_state(),
            "router": router_state,
        },
        tmp / STATE_NAME,
    )
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def find_checkpoint(output_dir: Path) -> Path | None:
    """The checkpoint to resume from, also after a kill between the two renames."""
    for name in (CHECKPOINT_DIR, f"{CHECKPOINT_DIR}.old"):
        path = output_dir / name
        if (path / STATE_NAME).is_file():
            return path
    return None


def load_checkpoint(
    path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any
) -> tuple[TrainerState, Any]:
    """Restore model adapter, optimizer, scheduler and RNGs; returns the trainer state
    and the saved router state."""
    try:
        blob = torch.load(path / STATE_NAME, map_location="cpu", weights_only=False)
    except Exception as err:  # a corrupt file names itself
        raise FlexispeechError(f"{path / STATE_NAME}: cannot read checkpoint ({err})") from None
    load_adapter(model, path)
    optimizer.load_state_dict(blob["optimizer"])
    scheduler.load_state_dict(blob["scheduler"])
    set_rng_state(blob["rng"])
    return TrainerState(**blob["trainer"]), blob["router"]
