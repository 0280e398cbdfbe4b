"""recipes/synthetic/gate_offline.py composes an adapter behind a gate from stored
evaluations: the gated evaluation's rank-0 rows score the base model's hypothesis."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "recipes" / "synthetic" / "gate_offline.py"
REF = "the quick brown fox"


def run(adapter: Path, base: Path, gated: Path, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """The script on three evaluations, the composed run named "flexi_gated" into ``out``."""
    args = [str(adapter), str(base), "--gate-from", str(gated), "--name", "flexi_gated", "--out", str(out)]
    return subprocess.run([sys.executable, str(SCRIPT), *args, *extra], capture_output=True, text=True)


def _eval(path: Path, name: str, hyps: list[str], ranks: list[int], params_per_rank: int = 0) -> Path:
    utts = [
        {
            "id": f"u{i}",
            "ref": REF,
            "hyp": h,
            "rank": r,
            "duration": 1.0,
            "snr_db": None,
            "voice": "v",
            "seen_voice": False,
        }
        for i, (h, r) in enumerate(zip(hyps, ranks))
    ]
    mean_rank = sum(ranks) / len(ranks)
    data = {
        "name": name,
        "model": "random:tiny",
        "split": "test",
        "mean_rank": mean_rank,
        "active_params_mean": params_per_rank * mean_rank,
        "adapter_params_total": params_per_rank * 16,
        "utterances": utts,
    }
    path.mkdir()
    (path / "results.json").write_text(json.dumps(data))
    return path


def test_rank_zero_rows_take_the_base_hypothesis(tmp_path: Path) -> None:
    adapter = _eval(tmp_path / "flexi", "flexi", [REF, "the quick", "a quick brown fox"], [4, 4, 4], 100)
    base = _eval(tmp_path / "base", "base", ["quick", "the quick brown box", REF], [0, 0, 0])
    # the static run behind the same gate: the gate sent u1 and u2 to rank 0
    gated = _eval(tmp_path / "static_gated", "static_gated", ["x", "y", "z"], [16, 0, 0])
    done = run(adapter, base, gated, tmp_path / "out")
    assert done.returncode == 0, done.stderr
    result = json.loads((tmp_path / "out" / "results.json").read_text())
    by_id = {u["id"]: u for u in result["utterances"]}
    # u0 keeps the adapter's (right) words at rank 4, u1 and u2 the base model's at rank 0
    assert [by_id[i]["hyp"] for i in ("u0", "u1", "u2")] == [REF, "the quick brown box", REF]
    assert [by_id[i]["rank"] for i in ("u0", "u1", "u2")] == [4, 0, 0]
    assert result["overall"]["sub"] + result["overall"]["del"] + result["overall"]["ins"] == 1  # box
    assert abs(result["mean_rank"] - 4 / 3) < 1e-9
    assert abs(result["active_params_mean"] - 100 * 4 / 3) < 1e-6  # linear in the rank
    assert result["composed"] == {"adapter": "flexi", "base": "base", "gate_from": "static_gated"}
    assert "1 at rank 0" not in done.stdout and "2 at rank 0" in done.stdout, done.stdout


def test_check_counts_rows_that_differ(tmp_path: Path) -> None:
    adapter = _eval(tmp_path / "flexi", "flexi", [REF, REF], [4, 4])
    base = _eval(tmp_path / "base", "base", ["quick", "quick"], [0, 0])
    gated = _eval(tmp_path / "gated", "gated", ["x", "y"], [16, 0])
    end_to_end = _eval(tmp_path / "e2e", "flexi_gated", [REF, "quick fox"], [4, 0])
    done = run(adapter, base, gated, tmp_path / "o", "--check", str(end_to_end))
    assert done.returncode == 0, done.stderr
    assert "0 rows at another rank, 1 other hypotheses" in done.stdout, done.stdout


def test_different_utterances_are_one_line_error(tmp_path: Path) -> None:
    adapter = _eval(tmp_path / "flexi", "flexi", [REF, REF], [4, 4])
    base = _eval(tmp_path / "base", "base", ["quick"], [0])
    gated = _eval(tmp_path / "gated", "gated", ["x", "y"], [16, 0])
    done = run(adapter, base, gated, tmp_path / "o")
    assert done.returncode == 2
    assert done.stderr.startswith("gate_offline: base and flexi hold different utterances"), done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "o").exists()
