"""The streaming model is loaded with one intra-op thread (``streaming/threads.py``): the
loading thread then keeps no OpenMP pool that would slow the decoding thread's down."""

from __future__ import annotations

import pytest
import torch

import flexispeech.streaming.transcriber as transcriber_module
from flexispeech.commands.stream import load_online
from flexispeech.streaming.threads import one_intraop_thread


class _Loaded(Exception):
    pass


def test_load_online_loads_with_one_intraop_thread_and_restores_the_count(monkeypatch) -> None:
    seen: list[int] = []

    def fake_transcriber(**kwargs):
        seen.append(torch.get_num_threads())
        raise _Loaded

    monkeypatch.setattr(transcriber_module, "Transcriber", fake_transcriber)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with pytest.raises(_Loaded):
            load_online("random:tiny", None, None, "auto")
        assert seen == [1]
        assert torch.get_num_threads() == 2  # restored though loading failed
    finally:
        torch.set_num_threads(threads)


def test_one_intraop_thread_restores_the_count() -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with one_intraop_thread():
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)
