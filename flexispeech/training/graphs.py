"""The training step's forward and backward as CUDA graphs, one per shape of batch.

An eager Flexi-LoRA step on a GPU is bound by the host: Python, autograd and kernel
launches for ~200 adapted layers cost more time than the GPU needs for their work
(benchmarks/NOTES.md). A CUDA graph replays the whole forward + backward with one launch.
Graphs need static shapes and no host sync, so:

- the layers take the ``static`` path (``set_static_path``): ranks are read on the device,
  so one graph serves every rank pattern (new ranks are copied into the captured tensor);
- label lengths are padded with -100 up to one of ``LABEL_BUCKETS`` (padding with the
  ignore index leaves a token-mean loss unchanged, and the decoder is causal, so the real
  positions see nothing of the padding); every other input keeps its shape;
- one graph per input shape, captured on first use; all of them share one memory pool
  (only one runs at a time, and what a replay leaves behind, the loss and the gradients,
  is consumed by the optimizer step before the next replay).

The optimizer step, gradient clipping and the scheduler stay eager, outside the graph: the
graph's backward writes fresh gradients into the tensors it captured, and ``run`` hands
them back to the parameters after each replay (the trainer's ``zero_grad(set_to_none)``
drops them in between).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from flexispeech.lora.inject import adapter_parameters, set_static_path, use_ranks

LABEL_BUCKETS = (32, 64, 128, 256, 448)
"""Label lengths are padded up to the first of these that fits (448: Whisper's maximum)."""
MAX_GRAPHS = 8
"""At most this many captured shapes; a batch of a further shape runs eagerly."""
WARMUP = 3
"""Eager iterations on a side stream before a capture (kernels compile, cuBLAS picks)."""

LossFn = Callable[[nn.Module, dict[str, torch.Tensor]], torch.Tensor]


def why_not_graphed(
    device: torch.device,
    processes: int,
    grad_accum: int,
    mixed_precision: str,
    enabled: bool,
    nested_prob: float = 0.0,
    keep_base_weight: float = 0.0,
) -> str | None:
    """Why the training step cannot be captured here, or None when it can."""
    if not enabled:
        return "train.cuda_graphs is off"
    if nested_prob > 0:
        # The graph replays the routed ranks' forward + backward only; the nested loss adds
        # rows at sampled ranks inside the loss step, which a replay would skip.
        return "train.nested is on (its extra rows are built in the loss step)"
    if keep_base_weight > 0:
        # The base model's pass runs with the adapters switched off inside the loss step;
        # the captured step replays the adapted forward + backward only.
        return "train.keep_base is on (its base-model pass runs inside the loss step)"
    if device.type != "cuda":
        return f"the device is {device.type}, not cuda"
    if processes > 1:
        return f"{processes} processes (DDP's gradient all-reduce is not captured)"
    if grad_accum > 1:
        return f"train.grad_accum={grad_accum} (a replay writes gradients, it does not add to them)"
    if mixed_precision != "no":
        return f"train.mixed_precision={mixed_precision} (autocast caches casts across a capture)"
    return None


def label_bucket(length: int) -> int:
    """The padded label length of a batch whose longest label has ``length`` tokens."""
    return next((b for b in LABEL_BUCKETS if b >= length), length)


def pad_labels(inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``inputs`` with ``labels`` [B, L] padded with -100 to [B, label_bucket(L)]."""
    labels = inputs.get("labels")
    if labels is None or labels.dim() != 2:
        return inputs
    width = label_bucket(labels.shape[1])
    if width == labels.shape[1]:
        return inputs
    padded = labels.new_full((labels.shape[0], width), -100)
    padded[:, : labels.shape[1]] = labels
    return {**inputs, "labels": padded}


class _Graph:
    """One captured forward + backward: static inputs and ranks in, loss and gradients out."""

    def __init__(self, inputs: dict[str, torch.Tensor], ranks: torch.Tensor) -> None:
        self.inputs = {k: torch.empty_like(v, device="cuda") for k, v in inputs.items()}
        self.ranks = torch.empty(ranks.shape, dtype=torch.long, device="cuda")
        self.graph = torch.cuda.CUDAGraph()
        self.loss: torch.Tensor | None = None
        self.grads: list[torch.Tensor] = []

    def load(self, inputs: dict[str, torch.Tensor], ranks: torch.Tensor) -> None:
        for k, v in inputs.items():
            self.inputs[k].copy_(v, non_blocking=True)
        self.ranks.copy_(ranks, non_blocking=True)


class GraphedSteps:
    """Forward + backward of training steps replayed from CUDA graphs.

    Args:
        model: the injected model (a single process; not wrapped by DDP).
        loss_fn: ``(model, inputs) -> mean loss``, the family's training loss.
        log: where the one-line notes go (capture of a new shape, eager fallback).
    """

    def __init__(self, model: nn.Module, loss_fn: LossFn, log: Callable[[str], None] = print) -> None:
        self.model, self.loss_fn, self.log = model, loss_fn, log
        self.params = adapter_parameters(model)
        self.graphs: dict[tuple, _Graph] = {}
        self.pool = torch.cuda.graph_pool_handle()
        self.eager_shapes: set[tuple] = set()
        set_static_path(model)

    @staticmethod
    def key(inputs: dict[str, torch.Tensor]) -> tuple:
        return tuple(sorted((k, tuple(v.shape), v.dtype) for k, v in inputs.items()))

    def run(self, inputs: dict[str, torch.Tensor], ranks: torch.Tensor) -> torch.Tensor | None:
        """Forward + backward of one batch at ``ranks`` [B]; the detached mean loss on the
        device, or None when this batch's shape is not captured (run it eagerly)."""
        inputs = pad_labels({k: v for k, v in inputs.items() if isinstance(v, torch.Tensor)})
        key = self.key(inputs) + (tuple(ranks.shape),)
        graph = self.graphs.get(key)
        if graph is None:
            if key in self.eager_shapes:
                return None
            if len(self.graphs) >= MAX_GRAPHS:
                self.eager_shapes.add(key)
                self.log(
                    f"training step: {MAX_GRAPHS} shapes captured already; batches of shape {key[:-1]} run eagerly"
                )
                return None
            graph = self._capture(inputs, ranks)
            self.graphs[key] = graph
        graph.load(inputs, ranks)
        graph.graph.replay()
        for p, g in zip(self.params, graph.grads):
            p.grad = g
        return graph.loss

    def _capture(self, inputs: dict[str, torch.Tensor], ranks: torch.Tensor) -> _Graph:
        graph = _Graph(inputs, ranks)
        graph.load(inputs, ranks)
        saved = [p.grad for p in self.params]
        with use_ranks(self.model, graph.ranks):
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(WARMUP):
                    self.loss_fn(self.model, graph.inputs).backward()
                    for p in self.params:
                        p.grad = None
            torch.cuda.current_stream().wait_stream(stream)
            with torch.cuda.graph(graph.graph, pool=self.pool):
                loss = self.loss_fn(self.model, graph.inputs)
                loss.backward()
        graph.loss = loss.detach()
        graph.grads = [p.grad for p in self.params]
        for p, g in zip(self.params, saved):
            p.grad = g
        shapes = ", ".join(f"{k} {list(v.shape)}" for k, v in sorted(graph.inputs.items()))
        self.log(f"training step: captured a CUDA graph for {shapes}")
        return graph


def graphed_steps(
    model: nn.Module, loss_fn: LossFn, accelerator: Any, train_cfg: Any, log: Callable[[str], None] = print
) -> GraphedSteps | None:
    """The graph runner of a training run, or None with one log line saying why not."""
    reason = why_not_graphed(
        accelerator.device,
        accelerator.num_processes,
        train_cfg.grad_accum,
        train_cfg.mixed_precision,
        getattr(train_cfg, "cuda_graphs", True),
        getattr(getattr(train_cfg, "nested", None), "prob", 0.0),
        getattr(getattr(train_cfg, "keep_base", None), "weight", 0.0),
    )
    if reason is not None:
        log(f"training step: eager ({reason})")
        return None
    log(
        "training step: CUDA graphs, one per batch shape (label lengths padded to "
        f"{list(LABEL_BUCKETS)}); set train.cuda_graphs: false for eager steps"
    )
    return GraphedSteps(model, loss_fn, log)
