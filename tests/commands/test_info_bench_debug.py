"""``flexispeech info``, ``flexispeech bench`` and ``--debug``, run as a user runs them:
``python -m flexispeech`` in a fresh process."""

from __future__ import annotations

import importlib.metadata as md
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from flexispeech import __version__
from flexispeech.commands.info import PACKAGES


def flexispeech(*argv: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m flexispeech ARGV`` with one compute thread: tiny models only lose to a
    thread pool's spin-waits on a busy machine (tests/conftest.py says the same in-process)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "flexispeech", *argv],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=600,
    )


def test_info_prints_the_installed_versions() -> None:
    proc = flexispeech("info")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    expected = [f"flexispeech {__version__}"]
    for name in PACKAGES:
        try:
            expected.append(f"{name} {md.version(name)}")
        except md.PackageNotFoundError:
            expected.append(f"{name} missing")
    assert lines == expected
    assert f"torch {md.version('torch')}" in lines  # at least the one this test runs on is found


def test_bench_prints_and_appends_the_table(tmp_path: Path) -> None:
    out = tmp_path / "bench.md"
    out.write_text("earlier results\n")
    proc = flexispeech(
        "bench",
        "--shape",
        "tiny",
        "--batch",
        "2",
        "--audio-ctx",
        "4",
        "--label-len",
        "3",
        "--warmup",
        "0",
        "--reps",
        "1",
        "--out",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr
    table = proc.stdout[proc.stdout.index("### ") :].strip()
    lines = table.splitlines()
    assert (
        lines[0] == "### tiny, batch 2, 4 encoder positions, float32 on cpu"
    )  # the options reached the spec
    assert lines[2] == "| kind | variant | ms | ratio | spread (half IQR over rounds) | vs graphed base |"
    rows = {}
    for line in lines[4:]:  # one round: no spread; the last column (vs a CUDA-graphed base) is empty on a CPU
        m = re.fullmatch(r"\| (train|infer) \| (.+?) \| (\d+\.\d\d) \| (\d+\.\d\d)x \| – \|  \|", line)
        assert m, line
        rows[(m[1], m[2])] = (float(m[3]), float(m[4]))
    assert rows[("train", "base (floor)")][1] == 1.0 and rows[("infer", "base")][1] == 1.0
    for (kind, _), (ms, ratio) in rows.items():  # each ratio is to its kind's base row
        base_ms = rows[("train", "base (floor)") if kind == "train" else ("infer", "base")][0]
        assert ms > 0 and ratio == pytest.approx(ms / base_ms, abs=0.006 + 0.006 * ms / base_ms)
    assert {"Flexi segmented, mixed sorted", "PEFT r=64 (same dtype)"} <= {v for _, v in rows}
    assert out.read_text() == "earlier results\n" + table + "\n\n"  # appended, not overwritten


def test_bench_unknown_shape_is_one_line() -> None:
    proc = flexispeech("bench", "--shape", "huge")
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [
        "flexispeech bench: error: bench shape: expected one of ['base', 'large-v3', 'small', 'tiny'], got 'huge'"
    ]


def test_debug_shows_the_traceback_where_the_normal_mode_prints_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "none.yaml"
    plain = flexispeech("train", "--config", str(missing))
    assert plain.returncode == 2
    assert plain.stderr.splitlines() == [f"flexispeech train: error: {missing}: no such config file"]
    debug = flexispeech("--debug", "train", "--config", str(missing))
    assert debug.returncode == 1  # the exception leaves the interpreter
    err = debug.stderr.splitlines()
    assert err[0] == "Traceback (most recent call last):"
    assert any("flexispeech/training/config.py" in line for line in err)  # where it was raised
    assert err[-1] == f"flexispeech.errors.ConfigError: {missing}: no such config file"
