"""Host-to-GPU copies that do not wait for the GPU.

A copy from pageable host memory makes CUDA drain the stream first: a training step would
wait for the previous step's backward and optimizer step before it could queue the next
batch's work, leaving the GPU idle while the host works. From pinned memory the copy is
queued behind them instead.
"""

from __future__ import annotations

import torch


def to_device(tensor: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """``tensor`` on ``device``; a host tensor bound for a GPU goes through pinned memory."""
    device = torch.device(device)
    if device.type != "cuda" or tensor.device.type != "cpu":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)
