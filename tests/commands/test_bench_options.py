"""``flexispeech bench`` options that must fail in one line, and before the benchmark runs
(its minutes were spent before a bad --out or --profile failed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from flexispeech.cli import build_parser, main


@pytest.fixture
def no_benchmark(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if the benchmark itself starts."""
    import flexispeech.bench.variants as variants

    def run_bench(*_: object, **__: object) -> None:
        raise AssertionError("the benchmark ran before the options were checked")

    monkeypatch.setattr(variants, "run_bench", run_bench)


@pytest.mark.parametrize(
    ("argv", "needles"),
    [
        (["--device", "cuda:99"], ["--device", "cuda:99"]),  # no machine has a hundred GPUs
        (["--device", "foo"], ["--device", "'foo'", "not a torch device"]),
        (["--label-len", "5000"], ["--label-len", "at most 448", "5000"]),
    ],
)
def test_bad_values_are_one_line(no_benchmark: None, error_line, argv: list[str], needles: list[str]) -> None:
    assert main(["bench", *argv]) == 2
    error_line("bench", *needles)


def test_unwritable_outputs_fail_before_the_benchmark(no_benchmark: None, tmp_path: Path, error_line) -> None:
    assert main(["bench", "--out", str(tmp_path)]) == 2
    error_line("bench", "--out", str(tmp_path), "is a directory")
    profile = tmp_path / "nonexist" / "p.txt"
    assert main(["bench", "--profile", str(profile)]) == 2
    error_line("bench", "--profile", str(profile), "no such directory")


@pytest.mark.parametrize("dtype", ["int8", "float16"])
def test_only_the_offered_dtypes_are_taken(capsys, dtype: str) -> None:
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["bench", "--dtype", dtype])
    assert exit_.value.code == 2
    assert "argument --dtype: invalid choice" in capsys.readouterr().err
