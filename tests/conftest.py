"""Shared fixtures: the speech assets and an isolated, offline model cache."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# No test may reach a model hub: fail fast instead of waiting on the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _interpret_triton_without_cuda() -> None:
    """Without CUDA, run Triton kernels in Triton's interpreter (numpy on CPU tensors), so
    that tests/lora/test_kernels.py checks them on every run, not only on a GPU machine.
    ``triton.jit`` reads the variable when it decorates a function (Triton's own ``tl``
    library too), so it is set here, before anything (torch's flop counter does) imports
    Triton."""
    import importlib.util

    if importlib.util.find_spec("triton") is None:
        return
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")


_interpret_triton_without_cuda()

ASSETS = Path(__file__).parent / "assets"


@pytest.fixture(scope="session")
def assets_dir() -> Path:
    """``tests/assets``: short English utterances, see its README.md."""
    return ASSETS


@pytest.fixture(scope="session")
def transcripts() -> dict[str, str]:
    """file name -> the text spoken in it, from ``tests/assets/transcripts.txt``."""
    lines = (ASSETS / "transcripts.txt").read_text(encoding="utf-8").splitlines()
    return dict(line.split("\t", 1) for line in lines if line.strip())


@pytest.fixture
def tmp_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty ``FLEXISPEECH_CACHE`` for one test."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("FLEXISPEECH_CACHE", str(cache))
    return cache


@pytest.fixture(autouse=True)
def _one_thread_for_tiny_models(request: pytest.FixtureRequest):
    """Fast tests run tiny models, whose matmuls only lose to a multi-thread pool's
    spin-waits (a 60x slowdown was seen on 2 busy cores); slow tests keep every core."""
    import torch

    if request.node.get_closest_marker("slow"):
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
