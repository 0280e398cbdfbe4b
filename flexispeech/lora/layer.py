"""FlexiLoraLinear: an ``nn.Linear`` with a nested-rank LoRA adapter whose rank is per example."""

from __future__ import annotations

import math
import threading

import torch
from torch import nn

from flexispeech.lora.config import FlexiLoraConfig
from flexispeech.lora.kernels import lora_delta


class RankSlot(threading.local):
    """Where ``use_ranks`` puts the per-example ranks for the layers of ONE model.

    Every adapted layer of a model shares one slot, and each model has its own, so a
    second model in the process never sees these ranks. It is thread-local, so another
    thread running the same model does not either. ``torch.compile`` traces an attribute
    read of a ``threading.local`` (a ContextVar would graph-break), guarding on it.
    """

    ranks: torch.Tensor | None = None

    def __deepcopy__(self, memo: dict) -> RankSlot:
        # A copied model starts with no ranks set (and threading.local cannot be copied).
        return RankSlot()

    def __reduce__(self) -> tuple:
        return (RankSlot, ())


class FlexiLoraLinear(nn.Module):
    """``base(x) + scale(r) * (x @ A[:r].T) @ B[:, :r].T`` with ``r`` chosen per example.

    Args:
        base_layer: the frozen ``nn.Linear`` (in_features -> out_features), kept as is.
        config: ranks, scaling, dropout and init of the adapter.
        rank_slot: the model-wide slot that ``use_ranks`` fills (a fresh one if omitted).

    Parameters:
        lora_A: [r_max, in_features]; lora_B: [out_features, r_max] (zero at init).

    Forward: ``x`` [N, *, in_features] -> [N, *, out_features]. Row ``n`` uses rank
    ``ranks[n]`` of the active ``use_ranks`` context; when ``N`` is a multiple ``k`` of the
    number of ranks (beam search and ``num_return_sequences`` expand a batch with
    ``repeat_interleave``), each rank is repeated ``k`` times. Without a context every row
    uses ``default_rank`` (``r_max`` unless set).
    """

    def __init__(self, base_layer: nn.Linear, config: FlexiLoraConfig, rank_slot: RankSlot | None = None) -> None:
        super().__init__()
        if not isinstance(base_layer, nn.Linear):
            raise TypeError(f"FlexiLoraLinear wraps nn.Linear, got {type(base_layer).__name__}")
        self.base_layer = base_layer
        self.config = config
        self.rank_slot = rank_slot if rank_slot is not None else RankSlot()
        self.default_rank = config.r_max
        self.compute_path = config.compute_path
        r_max = config.r_max
        weight = base_layer.weight
        self.lora_A = nn.Parameter(torch.empty(r_max, base_layer.in_features, dtype=weight.dtype, device=weight.device))
        self.lora_B = nn.Parameter(torch.zeros(base_layer.out_features, r_max, dtype=weight.dtype, device=weight.device))
        self.dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        self.scales = config.scale_table()  # Python floats for the grouped/uniform paths
        # The same table as a tensor for the masked path (indexed by rank on the device);
        # not persistent: it is derived from the config, which is saved instead.
        self.register_buffer("scale_table", torch.tensor(self.scales, dtype=torch.float32, device=weight.device), persistent=False)
        self.reset_parameters()

    @property
    def in_features(self) -> int:
        return self.base_layer.in_features

    @property
    def out_features(self) -> int:
        return self.base_layer.out_features

    @property
    def weight(self) -> torch.Tensor:
        """The frozen base weight (code that inspects ``.weight`` keeps working)."""
        return self.base_layer.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base_layer.bias

    def reset_parameters(self) -> None:
        """A as configured (kaiming-uniform as PEFT, or gaussian), B zero: starts as base."""
        with torch.no_grad():
            if self.config.init == "gaussian":
                nn.init.normal_(self.lora_A, std=1.0 / self.config.r_max)
            else:
                nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
            self.lora_B.zero_()

    def row_ranks(self, n_rows: int) -> torch.Tensor:
        """The rank of each of ``n_rows`` input rows, [n_rows] int64."""
        ranks = self.rank_slot.ranks
        if ranks is None:
            return torch.full((n_rows,), self.default_rank, dtype=torch.long, device=self.lora_A.device)
        if ranks.shape[0] != n_rows:
            if n_rows % ranks.shape[0] != 0:
                raise RuntimeError(
                    f"use_ranks got {ranks.shape[0]} ranks but a layer saw a batch of {n_rows} rows, "
                    "which is not a multiple of it (batches may only be expanded by repeat_interleave)"
                )
            ranks = ranks.repeat_interleave(n_rows // ranks.shape[0])
        return ranks

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.base_layer(x)
        if x.dim() < 2:
            raise ValueError(f"FlexiLoraLinear expects [batch, ..., {self.in_features}] inputs, got shape {tuple(x.shape)}")
        ranks = self.row_ranks(x.shape[0])
        A, B = self.lora_A, self.lora_B
        h = self.dropout(x)
        if h.dtype != A.dtype and not torch.is_autocast_enabled(h.device.type):
            h = h.to(A.dtype)  # only when they differ: no needless casts
        delta = lora_delta(h, A, B, ranks, self.scale_table, self.scales, self.compute_path)
        if delta is None:
            return result
        return result + delta.to(result.dtype)

    def delta_weight(self, rank: int) -> torch.Tensor:
        """The rank-``rank`` update as a weight, ``scale(r) * B[:, :r] @ A[:r]`` [out, in]."""
        A = self.lora_A[:rank].float()
        B = self.lora_B[:, :rank].float()
        return (B @ A) * self.scales[rank]

    def extra_repr(self) -> str:
        return f"ranks={list(self.config.ranks)}, scaling={self.config.scaling}, alpha={self.config.alpha}"
