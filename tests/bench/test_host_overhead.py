"""benchmarks/host_overhead.py runs every variant, and with --kernels also times the other
copy's fused node, its ratios taken to PEFT's row."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_variant_is_timed_against_peft() -> None:
    kernels = ROOT / "flexispeech" / "lora" / "kernels.py"
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "host_overhead.py"),
            "--layers",
            "2",
            "--steps",
            "1",
            "--rounds",
            "1",
            "--kernels",
            str(kernels),
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    ).stdout
    rows = {
        line.split("|")[1].strip(): line.split("|")[3].strip()
        for line in out.splitlines()
        if line.startswith("| ")
    }
    expected = ["Flexi mixed", "Flexi all r=64", "Flexi all r=4", "Flexi all r=0"]
    infer = {
        "infer: base",
        "infer: PEFT LoRA r=64 unmerged",
        "infer: Flexi mixed unmerged",
        "infer: Flexi all r=64 unmerged",
        "infer: Flexi mixed unmerged [--kernels]",
        "infer: Flexi all r=64 unmerged [--kernels]",
    }
    assert (
        set(rows)
        == {"variant", "base (frozen, input grad)", "PEFT LoRA r=64"}
        | set(expected)
        | {f"{name} [--kernels]" for name in expected}
        | infer
    )
    assert rows["PEFT LoRA r=64"] == "1.00" and rows["infer: PEFT LoRA r=64 unmerged"] == "1.00"
    assert all(float(v) > 0 for k, v in rows.items() if k != "variant")
