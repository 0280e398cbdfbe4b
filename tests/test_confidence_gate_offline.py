"""recipes/synthetic/confidence_gate_offline.py: rows under the entropy threshold score the
base model's hypothesis, the threshold is the share's quantile of the reference evaluation."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "recipes" / "synthetic" / "confidence_gate_offline.py"


def _eval(path: Path, name: str, errors: list[int], entropies: list[float] | None) -> Path:
    utts = []
    for i, e in enumerate(errors):
        u = {"id": f"u{i}", "errors": e, "ref_words": 10}
        if entropies is not None:
            u["signals"] = {"proxy_entropy": entropies[i]}
        utts.append(u)
    path.mkdir()
    (path / "results.json").write_text(json.dumps({"name": name, "utterances": utts}))
    return path


def test_gate_scores_the_base_model_where_it_is_sure(tmp_path: Path) -> None:
    entropies = [0.1, 0.2, 3.0, 4.0]
    base = _eval(tmp_path / "base", "base", [0, 1, 5, 5], entropies)
    adapter = _eval(tmp_path / "adapter", "static", [3, 3, 1, 1], None)  # reads the base's entropies
    out = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--share",
            "0.5",
            "--threshold-from",
            str(base),
            "--run",
            str(adapter),
            str(base),
        ],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    assert "adapter 20.00 %, base 27.50 %" in out.stdout
    # the 0.5 quantile of the entropies is 1.6: rows 0 and 1 take the base's 0 and 1 errors
    assert "share 0.5 (entropy < 1.600): 50.0 % at rank 0, WER 7.50 %" in out.stdout, out.stdout
    assert "against the adapter 2 better, 0 worse, sign test p = 0.5" in out.stdout, out.stdout
