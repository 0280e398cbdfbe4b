"""benchmarks/gate_features.py: the threshold is the validation quantile, a far-away set is
flagged and the training rows are not, and the script prints a row per gate input."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import torch
from mini_corpus import write_mini_corpus

from flexispeech.lora.gate import NoveltyGate

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("gate_features", ROOT / "benchmarks" / "gate_features.py")
gate_features = importlib.util.module_from_spec(spec)
sys.modules["gate_features"] = gate_features
spec.loader.exec_module(gate_features)


def test_separation_flags_what_is_far_and_keeps_what_is_near() -> None:
    rng = np.random.default_rng(0)
    train, val, test = (rng.normal(0, 1, (n, 8)) + 5 for n in (300, 200, 200))
    real = rng.normal(0, 1, (50, 8)) - 5  # the opposite side of the origin: far in angle too

    def ppca(tr):
        gate = NoveltyGate.fit(torch.as_tensor(tr), components=2)
        return lambda z: gate.score(torch.as_tensor(z)).numpy()

    for score in (ppca, lambda tr: lambda z: gate_features.knn_distance(z, tr, 1)):
        real_flagged, test_flagged, auc = gate_features.separation(train, val, test, real, score, 0.99)
        assert real_flagged == 1.0 and auc == 1.0
        assert test_flagged <= 0.05  # the threshold is the validation's 0.99 quantile
    np.testing.assert_allclose(gate_features.knn_distance(train[:3], train, 1), 0.0, atol=1e-9)


def test_the_script_prints_a_row_per_gate_input(tmp_path, capsys) -> None:
    rng = np.random.default_rng(0)
    clips = [
        (rng.normal(0, 0.05, 8000), split, 0.5) for split in ["train"] * 8 + ["validation"] * 4 + ["test"] * 4
    ]
    synthetic = write_mini_corpus(tmp_path / "syn", clips)
    real = write_mini_corpus(tmp_path / "real", [(rng.normal(0, 0.3, 8000), "test", 0.5) for _ in range(4)])
    gate_features.main(
        ["--synthetic", str(synthetic), "--real", str(real), "--model", "random:tiny"]
        + ["--train", "8", "--heldout", "4", "--components", "2", "--batch-size", "4"]
    )
    out = capsys.readouterr().out
    assert "| shorter than 2 s | 4 |" in out  # the real recordings by duration, behind the study's gate
    rows = [
        line.split("|")[1:6]
        for line in out.splitlines()
        if line.startswith("| mean") or line.startswith("| std")
    ]
    assert [(r[0].strip(), r[1].strip()) for r in rows] == [
        (kind, dist)
        for kind in ("mean", "std", "mean+std")
        for dist in ("PPCA, 2 directions", "cosine, 1-th neighbour", "cosine, 5-th neighbour")
    ]
    for r in rows:
        assert 0 <= float(r[2].strip(" %")) <= 100 and 0 <= float(r[4]) <= 1
