"""Where a run's time goes: time waiting for data, augmenting, validating; utterances per second."""

from __future__ import annotations

import time

import pytest
import torch

from flexispeech.training import throughput
from flexispeech.training.throughput import Throughput


def slow_loader(n: int, delay: float):
    for i in range(n):
        time.sleep(delay)
        yield i


def test_waiting_for_the_loader_is_counted_and_shared_per_interval() -> None:
    t = Throughput()
    for _ in t.timed(slow_loader(4, 0.05)):
        time.sleep(0.05)  # the step
        t.examples += 8
    assert 0.18 < t.wait_s < 0.4
    line = t.interval()
    assert 0.35 < line["data_wait_share"] < 0.65  # half the time waiting, half stepping
    assert 60 < line["utt_per_s"] < 90  # 32 utterances in ~0.4 s
    with t.timing("validate_s"):
        time.sleep(0.1)
    for _ in t.timed(slow_loader(2, 0.0)):
        time.sleep(0.05)
        t.examples += 8
    line = t.interval()
    assert line["data_wait_share"] < 0.1  # validation time is not counted as stepping time
    assert 120 < line["utt_per_s"] < 180
    summary = t.summary(train_time_s=0.7)
    assert summary["validate_s"] >= 0.1 and summary["utt_per_s"] == round(48 / (0.7 - t.validate_s), 2)


class FakeStream:
    """A device queue on the host clock: queued work runs after the work queued before it."""

    def __init__(self) -> None:
        self.busy_until = time.perf_counter()

    def queue(self, seconds: float) -> None:
        self.busy_until = max(self.busy_until, time.perf_counter()) + seconds

    def synchronize(self) -> None:
        time.sleep(max(0.0, self.busy_until - time.perf_counter()))


class FakeEvent:
    """A CUDA timing event on a ``FakeStream``: done when the work queued before it is."""

    def __init__(self, stream: FakeStream) -> None:
        self.at = max(stream.busy_until, time.perf_counter())

    def query(self) -> bool:
        return time.perf_counter() >= self.at

    def synchronize(self) -> None:
        time.sleep(max(0.0, self.at - time.perf_counter()))

    def elapsed_time(self, end: FakeEvent) -> float:
        return (end.at - self.at) * 1e3  # milliseconds, as torch.cuda.Event's


def test_augment_gpu_time_leaves_out_the_previous_step(monkeypatch: pytest.MonkeyPatch) -> None:
    """The augmentation's first host sync waits for the previous step's queued backward:
    ``augment_s`` (host wall time) holds it, ``augment_gpu_s`` does not."""
    stream = FakeStream()

    def marker(device: torch.device | None) -> FakeEvent | None:
        return FakeEvent(stream) if device is not None and device.type == "cuda" else None

    monkeypatch.setattr(throughput, "stream_marker", marker)
    t = Throughput()
    stream.queue(0.3)  # the previous step's backward and optimizer step, still running
    with t.augmenting(torch.device("cuda")):
        stream.queue(0.05)  # the augmentation's kernels
        stream.synchronize()  # its first blocking copy to the device waits for both
    assert t.augment_s >= 0.3
    t.interval()  # a log line reads the finished spans without waiting
    assert 0.04 < t.augment_gpu_s < 0.15
    summary = t.summary(train_time_s=1.0)
    assert summary["augment_s"] >= 0.3 and 0.04 < summary["augment_gpu_s"] < 0.15


def test_no_device_time_on_a_cpu() -> None:
    t = Throughput()
    with t.augmenting(torch.device("cpu")):
        time.sleep(0.02)
    assert t.augment_s >= 0.02
    assert "augment_gpu_s" not in t.summary(
        train_time_s=1.0
    )  # CPU ops are synchronous: wall time is the work
