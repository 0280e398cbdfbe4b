"""FlexiLoraLinear: an ``nn.Linear`` with a nested-rank LoRA adapter whose rank is per example."""

from __future__ import annotations

import math

import torch
from torch import nn

from flexispeech.lora.config import FlexiLoraConfig
from flexispeech.lora.deltas import lora_delta
from flexispeech.lora.fold import folded_linear
from flexispeech.lora.kernels import fused_supported, lora_linear, needs_grad, static_linear, triton_usable
from flexispeech.lora.plans import RankPlan, Route, choose_route, expand_ranks
from flexispeech.lora.ranks import RankSlot


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

    def __init__(
        self, base_layer: nn.Linear, config: FlexiLoraConfig, rank_slot: RankSlot | None = None
    ) -> None:
        super().__init__()
        if not isinstance(base_layer, nn.Linear):
            raise TypeError(f"FlexiLoraLinear wraps nn.Linear, got {type(base_layer).__name__}")
        self.base_layer = base_layer
        self.config = config
        self.rank_slot = rank_slot if rank_slot is not None else RankSlot()
        self.default_rank = config.r_max
        self.compute_path = config.compute_path
        # Off: the plain-op paths only (autograd through separate ops), as a baseline to
        # measure the fused node against, and for checking the fused paths against.
        self.fused = True
        r_max = config.r_max
        weight = base_layer.weight
        self.lora_A = nn.Parameter(
            torch.empty(r_max, base_layer.in_features, dtype=weight.dtype, device=weight.device)
        )
        self.lora_B = nn.Parameter(
            torch.zeros(base_layer.out_features, r_max, dtype=weight.dtype, device=weight.device)
        )
        self.dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        self.scales = config.scale_table()  # Python floats for the grouped/uniform paths
        # The same table as a tensor for the masked path (indexed by rank on the device);
        # not persistent: it is derived from the config, which is saved instead.
        self.register_buffer(
            "scale_table",
            torch.tensor(self.scales, dtype=torch.float32, device=weight.device),
            persistent=False,
        )
        self._merged: tuple[int, torch.Tensor] | None = None  # see merge_for_inference
        self.reset_parameters()
        # Wrapping keeps the layer's mode: an adapter loaded into an eval-mode model must not
        # bring its dropout in training mode (random, batch-dependent transcripts).
        self.train(base_layer.training)

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

    def _no_dropout(self) -> bool:
        """Whether the adapter reads ``x`` itself (no dropout, or dropout in eval mode): then
        base and adapter share one input and the fused paths apply."""
        return isinstance(self.dropout, nn.Identity) or not self.dropout.training or self.dropout.p == 0

    def _route(self, x: torch.Tensor, plan: RankPlan | None) -> Route:
        """How this call is computed: ``plans.choose_route`` on this layer's options."""
        merged = self._merged
        return choose_route(
            self.compute_path,
            plan,
            device_type=x.device.type,
            tokens=x.numel() // x.shape[-1],
            fusable=self.fused and self._no_dropout() and fused_supported(x, self.base_layer, self.lora_A),
            triton_ok=triton_usable(x),
            needs_grad=needs_grad(x, self.base_layer, self.lora_A, self.lora_B),
            merged_rank=None if merged is None else merged[0],
            default_rank=self.default_rank,
            compiling=torch.compiler.is_compiling(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 2:
            raise ValueError(
                f"FlexiLoraLinear expects [batch, ..., {self.in_features}] inputs, got shape {tuple(x.shape)}"
            )
        A, B = self.lora_A, self.lora_B
        slot_ranks = self.rank_slot.ranks
        static = self.compute_path == "static" or torch.compiler.is_compiling()
        plan = None
        if slot_ranks is not None:
            self.row_ranks(x.shape[0])  # validates the batch size against the ranks
            if not static:  # one grouping per batch, shared by all layers (RankSlot.plan)
                plan = self.rank_slot.plan(x.shape[0])
        route = self._route(x, plan)
        if route.kernel == "merged":
            return nn.functional.linear(
                x, self._merged[1], self.base_layer.bias
            )  # whole batch at the merged rank
        if route.kernel == "fold":
            if plan is None:
                return folded_linear(
                    x, self.base_layer, A, B, [(0, x.shape[0], self.default_rank)], self.scales
                )
            mask = plan.span_mask(self.scales, x.dtype, x.device) if len(plan.distinct) > 1 else None
            return folded_linear(x, self.base_layer, A, B, plan.runs, self.scales, mask)
        if route.grouping == "static":
            # No plan, no host sync: CUDA graphs (set_static_path) and torch.compile.
            ranks = slot_ranks if slot_ranks is not None else self.row_ranks(x.shape[0])
            if route.kernel != "plain" and route.kernel != "compiled":
                return static_linear(x, self.base_layer, A, B, ranks, self.scale_table)
            ranks = expand_ranks(ranks, x.shape[0])
        elif route.kernel != "plain":
            return lora_linear(x, self.base_layer, A, B, plan, self.scales, route, self.default_rank)
        else:
            ranks = plan.ranks if plan is not None else self.row_ranks(x.shape[0])
        result = self.base_layer(x)
        h = self.dropout(x)
        if h.dtype != A.dtype and not torch.is_autocast_enabled(h.device.type):
            h = h.to(A.dtype)  # only when they differ: no needless casts
        delta = lora_delta(
            h, A, B, ranks, self.scale_table, self.scales, route.grouping, plan, self.default_rank
        )
        if delta is None:
            if torch.is_grad_enabled() and A.requires_grad:
                # Keep A and B in the graph (zero gradients) for DDP; adds exactly zero.
                return result + (A.sum() + B.sum()).to(result.dtype) * 0.0
            return result
        return result + delta.to(result.dtype)

    def merge_for_inference(self, rank: int) -> None:
        """Keep a merged copy ``W + scale(r) B[:, :r] A[:r]`` of the base weight [out, in].

        Non-destructive: base and adapter are untouched. While set, a batch whose rows are
        all at ``rank`` runs one plain linear with the merged weight (the base's cost);
        other batches take the unmerged paths. ``unmerge`` drops the copy.
        """
        if rank and rank not in self.config.ranks:  # rank 0, the base, is every adapter's (check_ranks)
            raise ValueError(f"rank {rank} not in the configured ranks {list(self.config.ranks)}")
        weight = self.base_layer.weight
        with torch.no_grad():
            merged = (weight.float() + self.delta_weight(rank)).to(weight.dtype) if rank else weight
        self._merged = (int(rank), merged)

    def unmerge(self) -> None:
        """Drop the merged copy of ``merge_for_inference``."""
        self._merged = None

    def delta_weight(self, rank: int) -> torch.Tensor:
        """The rank-``rank`` update as a weight, ``scale(r) * B[:, :r] @ A[:r]`` [out, in]."""
        A = self.lora_A[:rank].float()
        B = self.lora_B[:, :rank].float()
        return (B @ A) * self.scales[rank]

    def extra_repr(self) -> str:
        return f"ranks={list(self.config.ranks)}, scaling={self.config.scaling}, alpha={self.config.alpha}"
