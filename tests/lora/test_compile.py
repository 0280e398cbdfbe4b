"""``torch.compile`` with its default backend (inductor: generated C++ on CPU), full graph,
on a tiny injected model under ``use_ranks``: the same outputs and gradients as eager, the
ranks read at run time (a new pattern is no stale constant), rank 0 the base model.

The eager-backend trace is tested in test_inject.py; this is the code inductor generates.
"""

from __future__ import annotations

import pytest
import torch
from lora_models import TinyNet

from flexispeech import use_ranks
from flexispeech.lora import adapter_parameters


@pytest.fixture(scope="module")
def inductor():
    """Inductor compiling in this process (a worker pool only costs start-up on a few
    cores); skips, with the reason, where inductor cannot build code at all (e.g. no C++
    compiler). A failure on the adapted model itself is a test failure, not a skip."""
    with torch._inductor.config.patch(compile_threads=1):
        torch._dynamo.reset()
        try:
            torch.testing.assert_close(
                torch.compile(lambda t: t * 2 + 1)(torch.ones(3)), torch.full((3,), 3.0)
            )
        except Exception as err:  # noqa: BLE001 - whatever stops inductor here is the reason to skip
            pytest.skip(f"inductor cannot compile on this machine: {type(err).__name__}: {str(err)[:200]}")
        torch._dynamo.reset()
        yield
        torch._dynamo.reset()


PATTERNS = ([0, 1, 4], [4, 4, 2], [0, 0, 0], [2, 0, 1])


def test_inductor_full_graph_equals_eager_in_values_and_gradients(inductor: None, tiny: TinyNet) -> None:
    from torch._dynamo.utils import counters

    counters.clear()
    compiled = torch.compile(tiny, fullgraph=True)  # the default backend: inductor
    x = torch.randn(3, 2, 6, generator=torch.Generator().manual_seed(0))
    params = adapter_parameters(tiny)
    with torch.no_grad():
        base = tiny.head(tiny.fc2.base_layer(tiny.act(tiny.q_proj.base_layer(x))))

    def run(model: torch.nn.Module, ranks: list[int]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Output and adapter gradients of a fixed loss at ``ranks``."""
        tiny.zero_grad(set_to_none=True)
        with use_ranks(tiny, ranks):
            out = model(x)
        out.pow(2).sum().backward()
        return out.detach(), [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in params]

    outputs = []
    for ranks in PATTERNS:
        expected, expected_grads = run(tiny, ranks)
        got, got_grads = run(compiled, ranks)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
        for g, e in zip(got_grads, expected_grads):
            torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-6)
        for row, r in enumerate(ranks):
            if r == 0:  # rank 0 is the base model
                torch.testing.assert_close(got[row], base[row], rtol=1e-5, atol=1e-6)
        for layer in (tiny.q_proj, tiny.fc2):  # nothing above the batch's top rank learns
            assert layer.lora_A.grad is None or torch.count_nonzero(layer.lora_A.grad[max(ranks) :]) == 0
        outputs.append(got)
    # The ranks are read at run time: one graph serves every pattern, each with its own output.
    assert counters["stats"]["unique_graphs"] == 1, dict(counters["stats"])
    assert all(not torch.allclose(a, b) for i, a in enumerate(outputs) for b in outputs[i + 1 :])
