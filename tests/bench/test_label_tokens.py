"""benchmarks/label_tokens.py times a batch's labels, collate and batch preparation as the
training process made them before the loader's workers tokenised, and as it makes them now
(here on a CPU, on a small batch of short clips)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "label_tokens.py"
ROWS = (
    "labels of the batch (host)",
    "collate_waveforms (log-mel + labels)",
    "Augmenter.__call__ (whole)",
    "DeviceFeatures.__call__ (whole)",
)


def test_every_pair_is_timed_before_and_now() -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--batch", "2", "--seconds", "2", "--rounds", "1"],
        capture_output=True,
        text=True,
        cwd=SCRIPT.parents[1],
    )
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout
    assert "static_r16: batch 2 x 2 s on cpu" in out
    assert "| host work of the batch | before, ms | now, ms | now / before |" in out
    for row in ROWS:
        line = next(line for line in out.splitlines() if line.startswith(f"| {row} |"))
        before, now = (float(cell) for cell in line.split("|")[2:4])
        assert before > 0 and now > 0
