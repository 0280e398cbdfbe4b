"""Every compute path of FlexiLoraLinear against the written-out definition, values and gradients."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from flexispeech import FlexiLoraConfig, FlexiLoraLinear, inject, use_ranks
from flexispeech.lora.deltas import masked_delta
from flexispeech.lora.inject import flexi_layers, merge_for_inference, set_static_path, unmerge
from flexispeech.lora.kernels import lora_linear
from flexispeech.lora.plans import Route

RANKS = (0, 4, 8, 16)
# "triton" falls back to the masked path where the Triton kernels cannot run (CPU).
PATHS = ["auto", "masked", "grouped", "segmented", "fold", "triton"]


def make_layer(
    d_in: int = 24, d_out: int = 20, seed: int = 0, dtype: torch.dtype = torch.float32
) -> FlexiLoraLinear:
    torch.manual_seed(seed)
    layer = FlexiLoraLinear(nn.Linear(d_in, d_out), FlexiLoraConfig(ranks=RANKS, alpha=8.0))
    with torch.no_grad():
        layer.lora_B.normal_()
    return layer.to(dtype)


def reference(layer: FlexiLoraLinear, x: torch.Tensor, ranks: list[int]) -> torch.Tensor:
    """base(x) + scale(r) (x A[:r]^T) B[:, :r]^T row by row, in float64."""
    W, b = layer.base_layer.weight.double(), layer.base_layer.bias.double()
    A, B = layer.lora_A.double(), layer.lora_B.double()
    rows = []
    for n, r in enumerate(ranks):
        xn = x[n].double()
        rows.append(xn @ W.T + b + layer.scales[r] * (xn @ A[:r].T) @ B[:, :r].T)
    return torch.stack(rows)


def run(layer: FlexiLoraLinear, x: torch.Tensor, ranks: list[int], path: str) -> torch.Tensor:
    """``path``: a compute path, or ``plain:<path>`` for that path with ``fused`` off."""
    plain, _, path = path.rpartition(":")
    layer.fused = not plain
    layer.compute_path = path
    layer.rank_slot.ranks = torch.tensor(ranks, device=layer.lora_A.device)
    try:
        return layer(x)
    finally:
        layer.rank_slot.ranks = None


BATCHES = {
    "mixed": [16, 0, 4, 8, 0, 16],
    "sorted": [16, 16, 8, 4, 0, 0],
    "same": [8, 8, 8, 8, 8, 8],
    "all_zero": [0, 0, 0, 0, 0, 0],
    "one_active": [0, 0, 4, 0, 0, 0],
}


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("batch", sorted(BATCHES))
def test_every_path_matches_reference(path: str, batch: str) -> None:
    layer = make_layer()
    ranks = BATCHES[batch]
    for shape in [(6, 5, 24), (6, 24), (6, 2, 3, 24)]:
        x = torch.randn(*shape)
        out = run(layer, x, ranks, path)
        torch.testing.assert_close(out.double(), reference(layer, x, ranks), rtol=1e-5, atol=1e-5)


def test_rank_zero_rows_are_the_base_exactly_on_the_fused_path() -> None:
    layer = make_layer()
    x = torch.randn(6, 5, 24)
    base = layer.base_layer(x)
    for path in PATHS:
        out = run(layer, x, BATCHES["mixed"], path)
        assert torch.equal(out[1], base[1]) and torch.equal(out[4], base[4])
        assert torch.equal(run(layer, x, BATCHES["all_zero"], path), base)


def grads(layer: FlexiLoraLinear, x: torch.Tensor, ranks: list[int], path: str | None) -> list[torch.Tensor]:
    """Gradients of a fixed scalar loss w.r.t. x, W, b, A, B; ``path=None``: the plain-op
    masked reference (autograd through ``masked_delta``)."""
    layer.zero_grad()
    x = x.clone().requires_grad_(True)
    if path is None:
        t = torch.tensor(ranks)
        out = layer.base_layer(x) + masked_delta(x, layer.lora_A, layer.lora_B, t, layer.scale_table)
    else:
        out = run(layer, x, ranks, path)
    weights = torch.linspace(-1, 1, out.numel()).view(out.shape)
    (out * weights).sum().backward()
    params = [layer.base_layer.weight, layer.base_layer.bias, layer.lora_A, layer.lora_B]
    return [x.grad] + [p.grad.clone() for p in params]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("batch", ["mixed", "sorted", "same", "one_active"])
def test_gradients_equal_the_reference(path: str, batch: str) -> None:
    layer = make_layer()
    x = torch.randn(6, 5, 24)
    expected = grads(layer, x, BATCHES[batch], None)
    got = grads(layer, x, BATCHES[batch], path)
    for name, g, e in zip(["x", "W", "b", "A", "B"], got, expected):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-5, msg=f"grad of {name}")
    top = max(BATCHES[batch])
    assert torch.count_nonzero(got[3][top:]) == 0 and torch.count_nonzero(got[4][:, top:]) == 0


@pytest.mark.parametrize("path", ["plain:auto", "plain:masked", "plain:grouped", "plain:segmented"])
@pytest.mark.parametrize("batch", ["mixed", "sorted", "same", "one_active", "all_zero"])
def test_plain_op_paths_match_the_reference(path: str, batch: str) -> None:
    """The delta-only paths, which training with adapter dropout takes: values and gradients."""
    layer = make_layer()
    x = torch.randn(6, 5, 24)
    torch.testing.assert_close(
        run(layer, x, BATCHES[batch], path).double(),
        reference(layer, x, BATCHES[batch]),
        rtol=1e-5,
        atol=1e-5,
    )
    if batch != "all_zero":
        for name, g, e in zip(
            ["x", "W", "b", "A", "B"],
            grads(layer, x, BATCHES[batch], path),
            grads(layer, x, BATCHES[batch], None),
        ):
            torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-5, msg=f"grad of {name}")


def test_dropout_in_eval_mode_takes_the_fused_path(monkeypatch: pytest.MonkeyPatch) -> None:
    import flexispeech.lora.layer as layer_module

    torch.manual_seed(0)
    layer = FlexiLoraLinear(nn.Linear(24, 20), FlexiLoraConfig(ranks=RANKS, alpha=8.0, dropout=0.1))
    calls: list[str] = []
    monkeypatch.setattr(
        layer_module, "lora_linear", lambda *a, **k: calls.append("fused") or lora_linear(*a, **k)
    )
    x = torch.randn(6, 5, 24)
    layer.train()
    run(layer, x, BATCHES["sorted"], "auto")
    assert calls == []  # training: dropout needs its own adapter input, the plain ops
    layer.eval()
    out = run(layer, x, BATCHES["sorted"], "auto")
    assert calls == ["fused"]
    torch.testing.assert_close(out.double(), reference(layer, x, BATCHES["sorted"]), rtol=1e-5, atol=1e-5)


def test_frozen_base_gets_no_gradient_and_adapter_does() -> None:
    layer = make_layer()
    layer.base_layer.requires_grad_(False)
    x = torch.randn(6, 5, 24)
    run(layer, x, BATCHES["mixed"], "auto").pow(2).sum().backward()
    assert layer.base_layer.weight.grad is None and layer.lora_A.grad is not None


@pytest.mark.parametrize("narrow", [True, False])
@pytest.mark.parametrize("path", ["auto", "masked", "segmented", "fold"])
@pytest.mark.parametrize(
    "ranks",
    [[4] * 6, [8] * 6, [8, 8, 4, 4, 2, 0], [0, 4, 0, 2, 0, 0]],
    ids=["r4", "rmax", "sorted", "sparse"],
)
def test_narrow_rank_gradients_in_either_layout_equal_the_reference(
    monkeypatch: pytest.MonkeyPatch, narrow: bool, path: str, ranks: list[int]
) -> None:
    """The adapter's backward computes its rank-wide products ``g^T h`` and ``g B[:, :r]``
    transposed on a CPU below ``NARROW_RANK`` (``kernels.rank_mm``): the same gradients as
    the plain layout and the reference, r_max included (B's gradient is then the transposed
    product itself, unpadded); 516 positions, under which ``auto`` trains unfolded on a
    CPU (``fold`` asked for folds)."""
    import flexispeech.lora.kernels as kernels

    monkeypatch.setattr(kernels, "NARROW_RANK", 16 if narrow else 0)
    torch.manual_seed(0)
    layer = FlexiLoraLinear(nn.Linear(24, 20), FlexiLoraConfig(ranks=(0, 2, 4, 8), alpha=8.0))
    with torch.no_grad():
        layer.lora_B.normal_()
    x = torch.randn(6, 86, 24)  # 516 positions
    expected = grads(layer, x, ranks, None)
    got = grads(layer, x, ranks, path)
    for name, g, e in zip(["x", "W", "b", "A", "B"], got, expected):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-4, msg=f"grad of {name}")
    top = max(ranks)
    assert torch.count_nonzero(got[3][top:]) == 0 and torch.count_nonzero(got[4][:, top:]) == 0


@pytest.mark.parametrize("path", PATHS)
def test_bf16_within_tolerance(path: str) -> None:
    layer = make_layer(dtype=torch.bfloat16)
    x = torch.randn(6, 7, 24, dtype=torch.bfloat16)
    out = run(layer, x, BATCHES["mixed"], path)
    assert out.dtype == torch.bfloat16
    ref = reference(layer, x, BATCHES["mixed"])
    rel = (out.double() - ref).norm() / ref.norm()
    assert rel < 1e-2


def flops(layer: FlexiLoraLinear, x: torch.Tensor, ranks: list[int], path: str) -> int:
    with FlopCounterMode(display=False) as counter:
        run(layer, x, ranks, path)
    return counter.get_total_flops()


def test_lower_ranks_cost_fewer_flops_and_rank_zero_costs_nothing() -> None:
    layer = make_layer()
    x = torch.randn(6, 5, 24)
    base = 2 * 6 * 5 * 24 * 20
    assert flops(layer, x, BATCHES["all_zero"], "auto") == base
    # Shrink FLOPs of one row per unit of rank. (FlopCounterMode does not count the in-place
    # addmm_ of the expand, which fuses into the base output, so only the shrink shows.)
    per_rank = 2 * 5 * 24
    sorted_ranks = BATCHES["sorted"]
    assert flops(layer, x, sorted_ranks, "segmented") == base + per_rank * sum(sorted_ranks)
    assert flops(layer, x, [4] * 6, "auto") < flops(layer, x, [16] * 6, "auto")
    # masked: the top rank over the rows from the first to the last with rank > 0
    assert flops(layer, x, BATCHES["one_active"], "masked") == base + per_rank * 4


def test_lora_linear_without_plan_uses_the_default_rank() -> None:
    layer = make_layer()
    x = torch.randn(3, 24)
    out = lora_linear(
        x, layer.base_layer, layer.lora_A, layer.lora_B, None, layer.scales, Route("fused", "uniform"), 8
    )
    torch.testing.assert_close(out.double(), reference(layer, x, [8, 8, 8]), rtol=1e-5, atol=1e-5)


class Two(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.q_proj = nn.Linear(24, 24)
        self.fc2 = nn.Linear(24, 20)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.tanh(self.q_proj(x)))


def test_merged_fast_path_equals_unmerged_and_is_non_destructive() -> None:
    torch.manual_seed(0)
    model = inject(Two(), FlexiLoraConfig(ranks=RANKS, alpha=8.0, target_modules=("q_proj", "fc2")))
    for p in model.parameters():
        with torch.no_grad():
            p.normal_(0, 0.2)
    x = torch.randn(4, 3, 24)
    weights_before = {k: v.clone() for k, v in model.state_dict().items()}
    with use_ranks(model, 8):
        unmerged = model(x)
    with use_ranks(model, [8, 0, 16, 8]):
        mixed = model(x)
    merge_for_inference(model, 8)
    with use_ranks(model, 8):
        with FlopCounterMode(display=False) as counter:
            merged = model(x)
    assert counter.get_total_flops() == 2 * 12 * 24 * (24 + 20)  # the base model's cost
    torch.testing.assert_close(merged, unmerged, rtol=1e-5, atol=1e-5)
    with use_ranks(model, [8, 0, 16, 8]):  # not all at the merged rank: unmerged paths
        torch.testing.assert_close(model(x), mixed, rtol=0, atol=0)
    unmerge(model)
    assert all(torch.equal(v, weights_before[k]) for k, v in model.state_dict().items())
    with use_ranks(model, 8):
        assert torch.equal(model(x), unmerged)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("path", PATHS)
def test_cuda_paths_match_reference_in_bf16(path: str) -> None:
    layer = make_layer(d_in=256, d_out=320, dtype=torch.bfloat16).cuda()
    ranks = [16, 0, 4, 8, 0, 16]
    x = torch.randn(6, 33, 256, dtype=torch.bfloat16, device="cuda")
    out = run(layer, x, ranks, path)
    ref = reference(layer, x, ranks)
    assert ((out.double() - ref).norm() / ref.norm()) < 1e-2


@pytest.mark.parametrize("path", ["auto", "plain:masked"])
def test_all_rank_zero_batch_keeps_the_adapter_in_the_graph(path: str) -> None:
    """A DDP process whose rows are all at rank 0 must still produce (zero) adapter
    gradients, or the all-reduce of the other processes waits forever."""
    layer = make_layer()
    layer.base_layer.requires_grad_(False)
    x = torch.randn(6, 5, 24)
    out = run(layer, x, BATCHES["all_zero"], path)
    assert torch.equal(out, layer.base_layer(x))
    out.sum().backward()
    assert torch.count_nonzero(layer.lora_A.grad) == 0 and torch.count_nonzero(layer.lora_B.grad) == 0


def triton_device() -> str | None:
    """Where the Triton kernels run here: "cuda", else "cpu" under Triton's interpreter
    (float16/32 only: the interpreter has no bfloat16); None (skip) without Triton."""
    if importlib.util.find_spec("triton") is None:
        return None
    return "cuda" if torch.cuda.is_available() else "cpu"


def triton_skip_reason() -> str | None:
    """Why the Triton kernel tests cannot run here, or None."""
    if triton_device() is None:
        return "needs Triton (pip install 'triton>=3.7'; the dev extra has it)"
    if triton_device() == "cpu":
        import importlib.metadata

        major, minor = (int(p) for p in importlib.metadata.version("triton").split(".")[:2])
        if (major, minor) < (3, 7):  # 3.5 and 3.6 fail inside the interpreter on these kernels
            return f"Triton {major}.{minor}'s interpreter cannot run these kernels on CPU (needs >= 3.7)"
    return None


@pytest.fixture
def triton_kernels():
    """``flexispeech.lora.triton_kernels``; without CUDA its kernels must be interpreted
    (``TRITON_INTERPRET=1``, which tests/conftest.py sets before Triton is imported)."""
    from triton.runtime.interpreter import InterpretedFunction

    import flexispeech.lora.triton_kernels as module

    if triton_device() == "cpu" and not isinstance(module._shrink_kernel, InterpretedFunction):
        pytest.skip(
            "Triton was imported before TRITON_INTERPRET=1 was set (or it is set to 0): "
            "its kernels cannot run on CPU tensors in this process"
        )
    return module


def reference_grads(x, W, b, A, B, ranks, table, weights):
    """Output and grads of x, A, B in float64 through the row-by-row definition."""
    x, A, B = (t.detach().double().requires_grad_(True) for t in (x, A, B))
    rows = []
    for n, r in enumerate(ranks.tolist()):
        rows.append(x[n] @ W.double().T + b.double() + table[r].item() * (x[n] @ A[:r].T) @ B[:, :r].T)
    out = torch.stack(rows)
    (out * weights.double()).sum().backward()
    return out.detach(), x.grad, A.grad, B.grad


@pytest.mark.skipif(triton_skip_reason() is not None, reason=str(triton_skip_reason()))
@pytest.mark.parametrize("case", range(3))
def test_triton_kernels_match_float64_reference(case: int, triton_kernels) -> None:
    FlexiLinearTriton, shrink = triton_kernels.FlexiLinearTriton, triton_kernels.shrink
    device = triton_device()
    dtype = torch.bfloat16 if device == "cuda" else torch.float16
    gen = torch.Generator().manual_seed(1000 + case)
    # sizes off the tile multiples; ranks with 0s, an unsorted and a sorted batch; top < r_max
    n, t, d_in, d_out, r_max = [(5, 7, 96, 80, 16), (6, 33, 200, 130, 64), (4, 1, 64, 64, 64)][case]
    ranks = [[8, 0, 4, 16, 0], [64, 32, 16, 4, 0, 0], [0, 8, 0, 8]][case]
    top = max(ranks)

    def rnd(*shape, s=1.0):
        return (torch.randn(*shape, generator=gen) * s).to(device, dtype)

    x, W, b = rnd(n, t, d_in), rnd(d_out, d_in, s=d_in**-0.5), rnd(d_out)
    A, B = rnd(r_max, d_in, s=d_in**-0.5), rnd(d_out, r_max, s=0.5)
    table = torch.tensor([0.0] + [8.0 / r for r in range(1, r_max + 1)], device=device)
    rk = torch.tensor(ranks, device=device)
    weights = rnd(n, t, d_out)
    poisoned = torch.full((n * t, 16 if top <= 16 else 64), float("nan"), dtype=dtype, device=device)
    h = shrink(x.reshape(-1, d_in), A[:top], rk, table, out=poisoned)
    assert not torch.isnan(h).any()  # every element written, zeros above each rank
    xg, Ag, Bg = (v.clone().requires_grad_(True) for v in (x, A, B))
    out = FlexiLinearTriton.apply(xg, W, b, Ag, Bg, rk, table, top)
    (out * weights).sum().backward()
    ref, gx, gA, gB = reference_grads(
        x.cpu(), W.cpu(), b.cpu(), A.cpu(), B.cpu(), rk.cpu(), table.cpu(), weights.cpu()
    )
    for name, got, exp in [("out", out, ref), ("x", xg.grad, gx), ("A", Ag.grad, gA), ("B", Bg.grad, gB)]:
        rel = (got.detach().double().cpu() - exp).norm() / exp.norm()
        assert rel < 1e-2, f"{name}: relative error {rel:.2e}"
    base = torch.nn.functional.linear(x, W, b)
    for i, r in enumerate(ranks):
        if r == 0:  # rank-0 rows: exactly the base output, no adapter gradient
            assert torch.equal(out[i], base[i])
    assert torch.count_nonzero(Ag.grad[top:]) == 0 and torch.count_nonzero(Bg.grad[:, top:]) == 0


# --- the graph-safe ``static`` path (no host sync, CUDA-graph capturable) -----------------


@pytest.mark.parametrize("batch", sorted(BATCHES))
def test_static_path_matches_reference(batch: str) -> None:
    layer = make_layer()
    ranks = BATCHES[batch]
    for shape in [(6, 5, 24), (6, 24), (6, 2, 3, 24)]:
        x = torch.randn(*shape)
        out = run(layer, x, ranks, "static")
        torch.testing.assert_close(out.double(), reference(layer, x, ranks), rtol=1e-5, atol=1e-5)
    x = torch.randn(6, 5, 24)
    out = run(layer, x, ranks, "static")
    base = layer.base_layer(x)
    for i, r in enumerate(ranks):
        if r == 0:  # rank-0 rows add exactly zero
            assert torch.equal(out[i], base[i])


@pytest.mark.parametrize("batch", ["mixed", "same", "all_zero"])
def test_static_path_gradients_equal_the_reference(batch: str) -> None:
    layer = make_layer()
    x = torch.randn(6, 5, 24)
    expected = grads(layer, x, BATCHES[batch], None)
    got = grads(layer, x, BATCHES[batch], "static")
    for name, g, e in zip(["x", "W", "b", "A", "B"], got, expected):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-5, msg=f"grad of {name}")


def test_static_path_expands_ranks_for_repeated_rows_and_checks_the_batch() -> None:
    layer = make_layer()
    x = torch.randn(6, 5, 24)
    layer.compute_path = "static"
    layer.rank_slot.ranks = torch.tensor([4, 0, 16])  # beam search: each rank twice
    try:
        out = layer(x)
        with pytest.raises(RuntimeError, match="not a multiple"):
            layer(torch.randn(4, 5, 24))
    finally:
        layer.rank_slot.ranks = None
    torch.testing.assert_close(out.double(), reference(layer, x, [4, 4, 0, 0, 16, 16]), rtol=1e-5, atol=1e-5)
    layer.default_rank = 8  # no use_ranks context: every row at the default rank
    torch.testing.assert_close(layer(x).double(), reference(layer, x, [8] * 6), rtol=1e-5, atol=1e-5)


def test_static_path_with_dropout_takes_the_plain_ops_and_stays_close() -> None:
    torch.manual_seed(0)
    layer = FlexiLoraLinear(nn.Linear(24, 20), FlexiLoraConfig(ranks=RANKS, alpha=8.0, dropout=0.1))
    with torch.no_grad():
        layer.lora_B.normal_()
    layer.eval()  # dropout off: the result is the reference
    x = torch.randn(6, 5, 24)
    out = run(layer, x, BATCHES["mixed"], "static")
    torch.testing.assert_close(out.double(), reference(layer, x, BATCHES["mixed"]), rtol=1e-5, atol=1e-5)


def test_static_path_takes_no_host_sync(monkeypatch: pytest.MonkeyPatch) -> None:
    """Forward and backward of an injected model on the static path never read a tensor
    back to the host nor build a RankPlan (what a CUDA graph capture would fail on)."""
    from flexispeech.lora import plans
    from flexispeech.lora.ranks import RankSlot

    torch.manual_seed(0)
    model = inject(Two(), FlexiLoraConfig(ranks=RANKS, alpha=8.0, target_modules=("q_proj", "fc2")))
    for _, lyr in flexi_layers(model):
        with torch.no_grad():
            lyr.lora_B.normal_()
    set_static_path(model)
    x = torch.randn(4, 3, 24)
    ranks = torch.tensor([8, 0, 16, 4])
    with use_ranks(model, ranks):  # validates the ranks (one host read) before the region

        def forbidden(*args, **kwargs):
            raise AssertionError("host sync on the static path")

        for name in ("tolist", "item", "__bool__", "__int__", "nonzero"):
            monkeypatch.setattr(torch.Tensor, name, forbidden)
        monkeypatch.setattr(plans, "make_plan", forbidden)
        monkeypatch.setattr(RankSlot, "plan", forbidden)
        out = model(x)
        out.pow(2).sum().backward()
        monkeypatch.undo()
    set_static_path(model, False)
    with use_ranks(model, ranks):
        expected = model(x)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    assert all(lyr.compute_path == "auto" for _, lyr in flexi_layers(model))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_cuda_static_path_has_no_sync_and_replays_in_a_graph(dtype: torch.dtype) -> None:
    """bf16: the Triton kernels; fp32: the torch masked path. Forward + backward + AdamW
    captured once, replayed for two rank patterns, equal to eager steps."""
    from flexispeech.lora import adapter_parameters

    torch.manual_seed(0)
    model = (
        inject(Two(), FlexiLoraConfig(ranks=RANKS, alpha=8.0, target_modules=("q_proj", "fc2")))
        .cuda()
        .to(dtype)
    )
    for _, lyr in flexi_layers(model):
        with torch.no_grad():
            lyr.lora_B.normal_()
    set_static_path(model)
    x = torch.randn(4, 33, 24, device="cuda", dtype=dtype)
    static_ranks = torch.tensor([8, 0, 16, 4], device="cuda")
    with use_ranks(model, static_ranks):
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            model(x).float().pow(2).mean().backward()  # compiles the kernels, no sync allowed
        finally:
            torch.cuda.set_sync_debug_mode("default")
    params = adapter_parameters(model)
    start = [p.detach().clone() for p in params]
    opt = torch.optim.AdamW(params, lr=1e-2, fused=True, capturable=True)
    holder = {}

    def step() -> None:
        loss = model(x).float().pow(2).mean()
        loss.backward()
        opt.step()
        holder["loss"] = loss.detach()

    with use_ranks(model, static_ranks):
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):
                step()
                opt.zero_grad(set_to_none=True)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            step()
    for pattern in ([16, 16, 0, 4], [0, 0, 0, 0], [4, 8, 0, 16]):
        static_ranks.copy_(torch.tensor(pattern))
        with torch.no_grad():
            before = [p.detach().clone() for p in params]
        set_static_path(model, False)
        with torch.no_grad(), use_ranks(model, pattern):
            eager_loss = model(x).float().pow(2).mean()
        set_static_path(model)
        graph.replay()
        torch.testing.assert_close(holder["loss"], eager_loss, rtol=2e-2, atol=1e-4)
        moved = [not torch.equal(b, p) for b, p in zip(before, params)]
        assert any(moved)  # AdamW ran inside the graph
    assert not all(torch.equal(s, p) for s, p in zip(start, params))


@pytest.mark.parametrize("path", ["auto", "masked", "grouped", "segmented", "static"])
def test_fused_option_picks_the_node_or_the_plain_ops(monkeypatch: pytest.MonkeyPatch, path: str) -> None:
    """``fused`` off runs the plain-op delta, on runs one fused node; both equal the reference."""
    import flexispeech.lora.layer as layer_module

    calls: list[str] = []
    for name in ("lora_linear", "static_linear", "lora_delta"):
        real = getattr(layer_module, name)
        monkeypatch.setattr(
            layer_module, name, lambda *a, _n=name, _f=real, **k: calls.append(_n) or _f(*a, **k)
        )
    layer = make_layer()
    x = torch.randn(6, 5, 24)
    for plain in (False, True):
        calls.clear()
        out = run(layer, x, BATCHES["sorted"], f"plain:{path}" if plain else path)
        torch.testing.assert_close(out.double(), reference(layer, x, BATCHES["sorted"]), rtol=1e-5, atol=1e-5)
        fused_name = "static_linear" if path == "static" else "lora_linear"
        assert calls == (["lora_delta"] if plain else [fused_name])
