"""benchmarks/train_syncs.py runs the study's training settings end to end (here on a CPU,
with the random tiny Whisper): the corpus it generates trains, and the summary it prints
comes from the run's train_summary.json."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "train_syncs.py"


def test_smoke_on_cpu() -> None:
    args = ["--device", "cpu", "--model", "random:tiny", "--steps", "2", "--batch", "2", "--workers", "0"]
    args += ["--clips", "4", "--seconds", "1", "2", "--repeats", "1"]
    done = subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, cwd=SCRIPT.parents[1]
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "flexispeech from" in done.stdout
    assert "run 0: 2 steps," in done.stdout and "utterances/s, augmentation" in done.stdout
