"""recipes/synthetic/novelty_gate_offline.py: rows at or under a novelty threshold that the
confidence gate does not catch score the adapter's errors, the others the base model's; the
gate's own threshold reproduces a gated evaluation (``--check``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from mini_corpus import write_mini_corpus

from flexispeech.cli import main
from flexispeech.data.text import open_split
from flexispeech.lora.gate import EMBEDDING, ConfidenceGate, GatedRouter, NoveltyGate
from flexispeech.lora.router import FixedRouter

SCRIPT = Path(__file__).resolve().parents[1] / "recipes" / "synthetic" / "novelty_gate_offline.py"
N_TEST = 8


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    """A corpus whose splits have cached embeddings (random tiny Whisper), a gate fit on the
    train split, and evaluations of the test split: the adapter makes 1 error where the base
    makes 2 on even rows, 3 where the base makes 0 on odd rows; the base's entropy is 0.1 on
    row 1 (caught by the confidence gate at 0.5) and 1.0 elsewhere."""
    root = tmp_path_factory.mktemp("novelty")
    rng = np.random.default_rng(0)
    clips = [
        (
            rng.normal(0, 0.02 + 0.01 * (i % 3), 8000),
            "train" if i < 24 else "validation" if i < 32 else "test",
            0.5,
        )
        for i in range(32 + N_TEST)
    ]
    data = write_mini_corpus(root / "c", clips)
    args = ["signals", str(data), "--model", "random:tiny", "--embedding-only", "--audio-ctx", "100"]
    assert main(args) == 0
    train = open_split(str(data), "train").all_signals()[EMBEDDING]
    novelty = NoveltyGate.fit(train, components=4)
    test = open_split(str(data), "test")
    ids = [str(r["id"]) for r in test.rows]
    scores = novelty.score(torch.as_tensor(test.all_signals()[EMBEDDING])).numpy()
    novelty.threshold = float(np.sort(scores)[5])  # the 6 lowest scores pass the novelty gate
    gated = GatedRouter(FixedRouter(4), novelty, confident=ConfidenceGate("proxy_entropy", 0.5))
    adapter = root / "gated"
    adapter.mkdir()
    (adapter / "router.json").write_text(json.dumps(gated.to_dict()))
    base_err = [2 if k % 2 == 0 else 0 for k in range(N_TEST)]
    ad_err = [1 if k % 2 == 0 else 3 for k in range(N_TEST)]
    entropy = [0.1 if k == 1 else 1.0 for k in range(N_TEST)]
    passed = [s <= novelty.threshold and e >= 0.5 for s, e in zip(scores, entropy)]

    def write(name: str, errors: list[int], ranks: list[int], signals: bool) -> Path:
        rows = [
            {
                "id": i,
                "errors": e,
                "ref_words": 10,
                "rank": r,
                **({"signals": {"proxy_entropy": h}} if signals else {}),
            }
            for i, e, r, h in zip(ids, errors, ranks, entropy)
        ]
        (root / name).mkdir()
        (root / name / "results.json").write_text(json.dumps({"name": name, "utterances": rows}))
        return root / name

    gated_ranks = [4 if p else 0 for p in passed]
    return {
        "data": data,
        "gate": adapter,
        "base": write("base", base_err, [0] * N_TEST, signals=True),
        "adapter": write("adapter", ad_err, [4] * N_TEST, signals=False),
        "gated_eval": write(
            "gated_eval", [a if p else b for a, b, p in zip(ad_err, base_err, passed)], gated_ranks, True
        ),
        "wrong_eval": write("wrong_eval", base_err, [0] * N_TEST, signals=True),
        "scores": scores,
        "passed": passed,
        "base_err": base_err,
        "ad_err": ad_err,
        "entropy": entropy,
    }


def run(s: dict, *extra: str) -> subprocess.CompletedProcess[str]:
    args = ["--gate", str(s["gate"]), "--data", str(s["data"]), "--run", str(s["adapter"]), str(s["base"])]
    return subprocess.run([sys.executable, str(SCRIPT), *args, *extra], capture_output=True, text=True)


def expected(s: dict, threshold: float) -> tuple[int, float, int, int]:
    """Rows to the adapter, WER %, better and worse, counted here without the script."""
    through = [sc <= threshold and h >= 0.5 for sc, h in zip(s["scores"], s["entropy"])]
    errors = [a if t else b for a, b, t in zip(s["ad_err"], s["base_err"], through)]
    better = sum(t and a < b for a, b, t in zip(s["ad_err"], s["base_err"], through))
    worse = sum(t and a > b for a, b, t in zip(s["ad_err"], s["base_err"], through))
    return sum(through), 100 * sum(errors) / (10 * N_TEST), better, worse


def test_each_threshold_scores_the_rows_it_lets_through(setup) -> None:
    middle = float(np.sort(setup["scores"])[2])  # the 3 lowest scores pass
    out = run(setup, "--threshold", str(middle), "--check", str(setup["gated_eval"]))
    assert out.returncode == 0, out.stderr
    assert f"--check: the gate passes the same {sum(setup['passed'])} rows" in out.stdout
    assert "1 caught by the confidence gate" in out.stdout
    lines = [line for line in out.stdout.splitlines() if line.startswith("threshold")]
    assert len(lines) == 2 and "(the gate)" in lines[0]
    for line, t in zip(lines, [None, middle]):
        n, wer, better, worse = expected(setup, float(np.sort(setup["scores"])[5]) if t is None else t)
        assert (
            f": {n} rows to the adapter, WER {wer:.2f} %; against the base {better} better, {worse} worse"
            in line
        )


def test_check_fails_when_the_gate_disagrees_with_the_evaluation(setup) -> None:
    out = run(setup, "--check", str(setup["wrong_eval"]))
    assert out.returncode == 1
    assert f"{sum(setup['passed'])} of {N_TEST} rows gated differently" in out.stderr


def test_in_domain_share_and_a_split_without_embeddings(setup, tmp_path) -> None:
    out = run(setup, "--in-domain", str(setup["data"]), "validation")
    assert out.returncode == 0, out.stderr
    assert "% of " + f"{setup['data']} validation" in out.stdout
    bare = write_mini_corpus(tmp_path / "bare", [(np.zeros(8000), "test", 0.5)])
    out = run(setup, "--in-domain", str(bare), "test")
    assert out.returncode == 2 and "no cached embedding" in out.stderr and "Traceback" not in out.stderr
