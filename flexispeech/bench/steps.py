"""The timed steps of ``flexispeech.bench.variants``: a training or inference step, eager or as a
whole-step CUDA graph, the timer (median after warm-up) and the profiler table.

Every variant of the benchmark goes through these same functions, so the ratios compare
the adapters and nothing else (same optimizer, same timer, same synchronisation).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

import torch
from torch import nn

from flexispeech.bench.spec import BenchSpec


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_fn(fn: Callable[[], Any], spec: BenchSpec) -> float:
    """Median seconds of ``fn`` after warm-up (device events on CUDA, host clock on CPU)."""
    for _ in range(spec.warmup):
        fn()
    times = []
    for _ in range(spec.reps):
        if spec.device.startswith("cuda"):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1000)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def train_step_fn(
    model: nn.Module, batch: dict[str, torch.Tensor], params: list[nn.Parameter], ctx: Callable[[], Any]
) -> Callable[[], None]:
    # fused=True on CUDA (one kernel for all tensors): the foreach version cost ~8 ms per
    # step at 384 adapter tensors (benchmarks/NOTES.md). Every variant gets the same.
    opt = torch.optim.AdamW(params, lr=1e-4, fused=bool(params) and params[0].is_cuda)

    def step() -> None:
        with ctx():
            loss = model(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def infer_fn(model: nn.Module, batch: dict[str, torch.Tensor], ctx: Callable[[], Any]) -> Callable[[], None]:
    @torch.no_grad()
    def forward() -> None:
        with ctx():
            model(**batch)

    return forward


def capture_graph(fn: Callable[[], Any], warmup: int = 3) -> tuple[Callable[[], None], torch.cuda.CUDAGraph]:
    """Capture ``fn`` (one training or inference step) in a CUDA graph.

    ``fn`` runs ``warmup`` times on a side stream first (Triton compiles, cuBLAS picks its
    kernels, AdamW creates its state), then once under capture; the returned replay runs
    the captured kernels with no Python per layer. Inputs must stay at the same addresses:
    copy new data (and new ranks) into the captured tensors before each replay.
    """
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay, graph


def graphed_train_step(
    model: nn.Module, batch: dict[str, torch.Tensor], params: list[nn.Parameter], ctx: Callable[[], Any]
) -> tuple[Callable[[], None], Callable[[], float]]:
    """A whole training step (forward, backward, fused AdamW) as one CUDA graph.

    Returns ``(replay, last_loss)``. ``ctx`` (e.g. ``use_ranks`` with a device tensor) is
    entered once around warm-up and capture, so its host-side checks stay outside the graph.
    Gradients are not zeroed inside the graph: backward writes them fresh on every replay
    (they were ``None`` at capture), the pattern of PyTorch's whole-network capture.
    """
    opt = torch.optim.AdamW(params, lr=1e-4, fused=True, capturable=True)
    holder: dict[str, torch.Tensor] = {}

    def step() -> None:
        loss = model(**batch).loss
        loss.backward()
        opt.step()
        holder["loss"] = loss.detach()

    def warm_step() -> None:
        step()
        opt.zero_grad(set_to_none=True)

    with ctx():
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(3):
                warm_step()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            step()
    holder["graph"] = graph  # type: ignore[assignment]  # keep it alive with the closure
    return graph.replay, lambda: float(holder["loss"])


def graphed_infer(
    model: nn.Module, batch: dict[str, torch.Tensor], ctx: Callable[[], Any]
) -> Callable[[], None]:
    """One no-grad forward pass as a CUDA graph (see ``capture_graph``)."""
    with ctx():
        replay, graph = capture_graph(infer_fn(model, batch, nullcontext))
    return lambda: (graph, replay())[1]


def profile_step(step: Callable[[], None], spec: BenchSpec, name: str) -> None:
    """Write the top kernels/ops of two training steps (torch.profiler) to ``spec.profile``;
    the floor is profiled the same way, so the two tables can be subtracted."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if spec.device.startswith("cuda") else [])
    with profile(activities=activities) as prof:
        for _ in range(2):
            step()
        sync(spec.device)
    key = "self_cuda_time_total" if spec.device.startswith("cuda") else "self_cpu_time_total"
    with open(spec.profile, "a") as f:
        f.write(f"== {spec.shape} batch={spec.batch}: {name} (2 steps)\n")
        f.write(prof.key_averages().table(sort_by=key, row_limit=30) + "\n")
