"""benchmarks/rank_alignment.py: every variant is timed, and a rank padded to a masked wider
block computes what the exact rank computes (forward and every gradient), so the two rows
time the same layer; the folded rows are checked against the exact rank in test_fold.py
and test_kernels.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from flexispeech.lora.kernels import _FlexiLinear
from flexispeech.lora.plans import block_mask, rank_mask

ROOT = Path(__file__).resolve().parents[2]


def test_every_variant_is_timed() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "rank_alignment.py"), "--device", "cpu"]
        + ["--rows", "2", "--positions", "8", "--reps", "1", "--warmup", "0", "--ranks", "4,16", "--mixed"],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    ).stdout
    rows = [
        line.split("|")[1:3]
        for line in out.splitlines()
        if line.startswith("| train") or line.startswith("| infer")
    ]
    variants = {f"{k.strip()} {v.strip()}" for k, v in rows}
    expected = {
        f"{k} {v}"
        for k in ("train", "infer")
        for v in (
            "base",
            "mixed masked",
            "mixed folded",
            "r=4 exact",
            "r=4 folded",
            "r=4 padded to 16",
            "r=16 exact",
            "r=16 folded",
        )
    }
    assert variants == expected and len(rows) == 3 * len(expected)  # three layer shapes


def test_layouts_time_the_plain_layout_and_the_products_per_length() -> None:
    """``--layouts``: the plain-layout rows for ranks under ``NARROW_RANK`` only, the four
    products for every rank; ``--positions`` a list: one table per length and shape."""
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "rank_alignment.py"), "--device", "cpu"]
        + ["--rows", "2", "--positions", "4,8", "--reps", "1", "--warmup", "0", "--ranks", "4,16"]
        + ["--pad", "0", "--d-model", "16", "--frozen-base", "--layouts", "--shapes", "attn,fc1"],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    ).stdout
    assert "attn: 16 -> 16, 2 x 4 = 8 positions" in out and "fc1: 16 -> 64, 2 x 8 = 16 positions" in out
    rows = [line.split("|")[1:3] for line in out.splitlines() if line.startswith("| ")]
    variants = [f"{k.strip()} {v.strip()}" for k, v in rows if k.strip() != "kind"]
    products = ("g^T h", "(h^T g)^T", "g B[:, :r]", "(B[:, :r]^T g^T)^T")
    expected = ["train r=4 exact, plain layout", "train r=4 folded, plain layout"]
    expected += [f"gemm r={r}: {p}" for r in (4, 16) for p in products]
    for name in expected:
        assert variants.count(name) == 4  # 2 lengths x 2 shapes
    assert not any(v.startswith("train r=16") and "plain layout" in v for v in variants)


def test_padded_block_computes_the_exact_rank() -> None:
    torch.manual_seed(0)
    rows, r, pad, r_max = 3, 4, 16, 64
    x = torch.randn(rows, 5, 12, dtype=torch.float64, requires_grad=True)
    w = torch.randn(7, 12, dtype=torch.float64, requires_grad=True)
    b = torch.randn(7, dtype=torch.float64, requires_grad=True)
    A = torch.randn(r_max, 12, dtype=torch.float64, requires_grad=True)
    B = torch.randn(7, r_max, dtype=torch.float64, requires_grad=True)
    scales = torch.tensor([0.0] + [16.0 / k for k in range(1, r_max + 1)], dtype=torch.float64)
    grad = torch.randn(rows, 5, 7, dtype=torch.float64)
    results = []
    for blocks, mask in (
        ([(0, rows, r, float(scales[r]))], A),
        (
            [(0, rows, pad, None)],
            block_mask(rank_mask(torch.full((rows,), r), scales, pad, torch.float64), 0, rows),
        ),
    ):
        y = _FlexiLinear.apply(x, w, b, A, B, mask, blocks)
        grads = torch.autograd.grad(y, (x, w, b, A, B), grad)
        results.append((y.detach(), *grads))
    for exact, padded in zip(*results):
        torch.testing.assert_close(padded, exact)
    for _, _, _, _, grad_a, grad_b in results:  # no gradient above rank r, in either form
        assert grad_a[r:].abs().sum() == 0 and grad_b[:, r:].abs().sum() == 0
