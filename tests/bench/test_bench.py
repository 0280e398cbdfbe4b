"""``flexispeech bench`` on a tiny CPU shape: every variant runs, ratios are to the right reference."""

from __future__ import annotations

import pytest

from flexispeech.bench.steps import time_fn
from flexispeech.bench.variants import BenchSpec, format_table, run_bench
from flexispeech.errors import ConfigError


def test_every_variant_runs_and_ratios_are_to_the_base() -> None:
    spec = BenchSpec(
        shape="tiny", batch=2, audio_ctx=4, label_len=3, device="cpu", dtype="float32", warmup=0, reps=1
    )
    lines: list[str] = []
    rows = run_bench(spec, log=lines.append)
    by = {(r["kind"], r["variant"]): r for r in rows}
    assert by[("train", "base (floor)")]["ratio"] == 1.0 and by[("infer", "base")]["ratio"] == 1.0
    for kind, ref in (("train", "base (floor)"), ("infer", "base")):
        base = by[(kind, ref)]["seconds"]
        for r in rows:
            if r["kind"] == kind:
                assert r["seconds"] > 0 and r["ratio"] == pytest.approx(r["seconds"] / base)
                assert r["spread"] is None  # one round: too few to say
    # the CPU-only paths and the graph-safe path are timed; CUDA graphs are not on a CPU
    names = {v for _, v in by}
    assert {
        "Flexi segmented, mixed sorted",
        "Flexi grouped (gather), mixed",
        "Flexi plain ops masked, mixed sorted",
        "Flexi auto, all r=4",
        "Flexi auto, all r=64",
        "flexispeech train step (eager), mixed sorted",
        "Flexi merged fast path, all r=16",
        "PEFT r=64 (same dtype)",
    } <= names
    assert not any("graphed" in v for v in names)
    assert "Flexi triton, mixed sorted" not in names  # Triton runs on CUDA only: no fallback row
    table = format_table(rows, spec)
    assert table.count("\n| train |") + table.count("\n| infer |") == len(rows)
    assert "spread (half IQR over rounds)" in table and "| – |" in table
    assert lines[0].startswith("shape=tiny batch=2")


def test_unknown_shape_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="bench shape"):
        run_bench(BenchSpec(shape="huge"), log=lambda _: None)


class FakeClock:
    """A ``time.perf_counter`` stand-in: each call of the timed function advances it by the
    next of ``durations``, so the timer's result is known exactly."""

    def __init__(self, durations: list[float]) -> None:
        self.now = 1000.0
        self.durations = list(durations)

    def perf_counter(self) -> float:
        return self.now

    def step(self) -> None:
        self.now += self.durations.pop(0)


@pytest.mark.parametrize(
    ("warmup", "durations", "median"),
    [
        (2, [100.0, 90.0, 0.3, 0.1, 5.0], 0.3),  # odd reps: the middle one, not the mean (1.8) nor a warm-up
        (1, [100.0, 0.4, 0.1, 9.0, 0.2], 0.3),  # even reps: the mean of the middle two
    ],
)
def test_time_fn_is_the_median_after_warmup(
    monkeypatch: pytest.MonkeyPatch, warmup: int, durations: list[float], median: float
) -> None:
    import flexispeech.bench.steps as steps

    clock = FakeClock(durations)
    monkeypatch.setattr(steps.time, "perf_counter", clock.perf_counter)
    seconds = time_fn(clock.step, BenchSpec(device="cpu", warmup=warmup, reps=len(durations) - warmup))
    assert clock.durations == []  # every warm-up and timed call ran, no more
    assert seconds == pytest.approx(median, abs=1e-9)


@pytest.mark.parametrize(
    ("field", "value", "flag"),
    [
        ("reps", 0, "--reps"),
        ("batch", 0, "--batch"),
        ("audio_ctx", 0, "--audio-ctx"),
        ("warmup", -1, "--warmup"),
    ],
)
def test_numbers_that_cannot_be_timed_are_a_config_error(field: str, value: int, flag: str) -> None:
    with pytest.raises(ConfigError, match=f"bench {flag}: expected at least"):
        BenchSpec(**{field: value})


def test_windows_and_labels_past_whisper_s_are_a_config_error() -> None:
    from flexispeech.bench.models import build_whisper

    with pytest.raises(ConfigError, match="bench --label-len: expected at most 448"):
        BenchSpec(label_len=5000)
    # the window: the check every command's model goes through (models.whisper.set_audio_ctx)
    with pytest.raises(ConfigError, match=r"audio_ctx: must be in \[1, 1500\] encoder positions, got 5000"):
        build_whisper(BenchSpec(audio_ctx=5000, dtype="float32"))
    assert build_whisper(BenchSpec(audio_ctx=4, dtype="float32")).config.max_source_positions == 4


def test_only_times_the_matching_variants_and_the_references() -> None:
    spec = BenchSpec(
        shape="tiny",
        batch=2,
        audio_ctx=4,
        label_len=3,
        device="cpu",
        dtype="float32",
        warmup=0,
        reps=1,
        only=r"auto, all r=(4|64)$",
    )
    rows = run_bench(spec, log=lambda _: None)
    assert [(r["kind"], r["variant"]) for r in rows] == [
        ("train", "base (floor)"),
        ("infer", "base"),
        ("train", "Flexi auto, all r=64"),
        ("train", "Flexi auto, all r=4"),
        ("infer", "Flexi unmerged auto, all r=64"),
        ("infer", "Flexi unmerged auto, all r=4"),
    ]
    with pytest.raises(ConfigError, match="bench --only: '\\(' is not a regular expression"):
        BenchSpec(only="(")
