"""benchmarks/augment_cost.py times every stage of the gpu profile's augmentation and the
training step beside it (here on a CPU, on a small batch of short clips)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "augment_cost.py"
STAGES = (
    "speed perturbation",
    "reverb: FFT convolution",
    "noise: generation",
    "device log-mel",
    "SpecAugment",
)


def run(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--batch", "2", "--seconds", "2", "--reps", "1", *args],
        capture_output=True,
        text=True,
        cwd=SCRIPT.parents[1],
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_static_run_stages_and_step() -> None:
    out = run("--step-reps", "1")
    assert "flexispeech from" in out and "static_r16: batch 2 x 2 s on cpu" in out
    assert all(s in out for s in STAGES)
    assert "| Augmenter.__call__ (whole) |" in out and "| training step (Whisper tiny, ranks [16]" in out


def test_flexi_run_augmentation_only() -> None:
    out = run("--run", "flexi_benefit_nscale", "--no-step")
    assert "flexi_benefit_nscale: batch 2" in out and "| **stages, sum** |" in out
    assert "training step" not in out


def test_the_loop_mode_times_both_loops() -> None:
    out = run("--step-reps", "1", "--loop", "1", "--loop-rounds", "1")
    assert "| steps on one batch (no augmentation) |" in out
    assert "| augment each batch, then step |" in out and "augmentation's cost in the loop:" in out
