"""Where a run's time goes: time waiting for data, augmenting, validating; utterances per second."""

from __future__ import annotations

import time

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
