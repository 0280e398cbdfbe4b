"""Training checkpoints: the adapter plus everything needed to continue bit for bit.

A checkpoint is a directory ``<output_dir>/checkpoint`` holding the adapter files
(``save_adapter``) and ``trainer_state.pt`` (step, data position, optimizer, scheduler,
RNG states). It is written into a temporary directory and swapped in by two renames
(:func:`flexispeech.atomic.replace_dir`), so a kill at any moment leaves the previous
checkpoint or the new one, never a torn one; after a kill between the two renames only
``checkpoint.old`` is there, and :func:`find_checkpoint` resumes from it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from flexispeech.atomic import existing_dir, replace_dir
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
    best_metric: float | None = None
    """Early stopping: the best validation metric so far, its step, and the validations
    since it (the best adapter itself is ``<output_dir>/best_adapter``)."""
    best_step: int | None = None
    bad_evals: int = 0


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
    """Write the checkpoint atomically (a temporary directory, then two renames) and return its path."""
    final = output_dir / CHECKPOINT_DIR
    with replace_dir(final) as tmp:
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
    return final


def find_checkpoint(output_dir: Path) -> Path | None:
    """The checkpoint to resume from, also after a kill between the two renames
    (``checkpoint.old``); None when there is none."""
    path = existing_dir(output_dir / CHECKPOINT_DIR)
    return path if (path / STATE_NAME).is_file() else None


def checkpoint_step(path: Path) -> int:
    """The optimizer step a checkpoint was saved at (without restoring anything)."""
    try:  # mmap: the optimizer's tensors stay on disk, only the trainer's fields are read
        blob = torch.load(path / STATE_NAME, map_location="cpu", weights_only=False, mmap=True)
        return int(blob["trainer"]["step"])
    except Exception as err:  # a corrupt file names itself
        raise FlexispeechError(f"{path / STATE_NAME}: cannot read checkpoint ({err})") from None


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
