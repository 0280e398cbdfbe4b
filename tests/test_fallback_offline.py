"""recipes/synthetic/fallback_offline.py scores the loop fallback from stored hypotheses:
two evaluations, or a calibration's decodes at every rank against a corpus."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from mini_corpus import write_mini_corpus

SCRIPT = Path(__file__).resolve().parents[1] / "recipes" / "synthetic" / "fallback_offline.py"
LOOP = "the quick the quick " * 20


def run(*args: str) -> str:
    done = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _eval(path: Path, name: str, hyps: list[str]) -> Path:
    utts = [{"id": f"u{i}", "ref": "the quick fox", "hyp": h, "rank": 4} for i, h in enumerate(hyps)]
    path.mkdir()
    (path / "results.json").write_text(json.dumps({"name": name, "model": "random:tiny", "utterances": utts}))
    return path


def test_two_evaluations(tmp_path: Path) -> None:
    routed = _eval(tmp_path / "routed", "static", [LOOP, "the quick fox", "a quick fox"])
    base = _eval(tmp_path / "base", "base", ["the quick fox", "no", "no"])
    out = run("evals", str(routed), str(base))
    # 9 reference words; the loop of 80 words makes 78 errors, "a quick fox" 1; the loop's row
    # takes the base model's hypothesis (0 errors), the others keep theirs
    assert "3 utterances" in out and "WER 877.78 % -> 11.11 %; 1 flagged, 1 took" in out, out
    assert "1 better, 0 worse, sign test p = 1" in out, out


def test_decodes_at_every_rank(tmp_path: Path) -> None:
    corpus = write_mini_corpus(tmp_path / "c", [(np.zeros(1600), "validation", 0.1)] * 2)
    decodes = tmp_path / "decodes.jsonl"
    rows = [
        {"adapter": "x", "split": "validation", "ranks": [0, 4], "audio_ctx": None},
        {"id": "u0", "hyps": {"0": "the quick fox", "4": LOOP}},
        {"id": "u1", "hyps": {"0": "quick", "4": "the quick fox"}},
    ]
    decodes.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out = run("decodes", str(decodes), "--data", str(corpus), "--model", "random:tiny")
    lines = {line.split(" |")[0]: line for line in out.splitlines()}
    assert lines["r4"] == "r4 | 1300.00 | 0.00 (1/1) | –", (
        out
    )  # 78 errors on 6 words  # the loop falls back to rank 0
    assert lines["r0"] == "r0 | 33.33 | – | 33.33 (0/0)", out  # nothing loops at rank 0


def _three_rank_decodes(tmp_path: Path) -> list[str]:
    """A corpus of two utterances and decodes at ranks 0, 2, 4 (u0: ranks 2 and 4 agree on
    the right words, rank 0 is off; u1: 0 and 4 agree, 2 loops): the script's arguments."""
    corpus = write_mini_corpus(tmp_path / "c", [(np.zeros(1600), "validation", 0.1)] * 2)
    decodes = tmp_path / "decodes.jsonl"
    rows = [
        {"adapter": "x", "split": "validation", "ranks": [0, 2, 4], "audio_ctx": None},
        {"id": "u0", "hyps": {"0": "a slow dog", "2": "the quick fox", "4": "the quick fox"}},
        {"id": "u1", "hyps": {"0": "the quick fox", "2": LOOP, "4": "the quick fox"}},
    ]
    decodes.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return ["decodes", str(decodes), "--data", str(corpus), "--model", "random:tiny", "--consensus"]


def test_consensus_of_the_ranks_is_paired_against_each_rank(tmp_path: Path) -> None:
    out = run(*_three_rank_decodes(tmp_path))
    # every utterance gets the right transcript: 0 errors on 6 reference words
    assert "consensus of all ranks: WER 0.00 % (picked r0 1, r2 1, r4 0)" in out, out
    assert "against r0 alone (50.00 %): -50.00 points" in out and "1 better / 0 worse" in out, out
    # two ranks cannot outvote each other: a tie, so the lower rank's (u1: the loop)
    assert "consensus of ranks above 0: WER 1300.00 % (picked r2 2, r4 0)" in out, out


def test_consensus_pools_are_chosen_and_unknown_ranks_refused(tmp_path: Path) -> None:
    common = _three_rank_decodes(tmp_path)
    out = run(*common, "--pool", "4,0", "--pool", "2,4")
    # two ranks always tie, and the pool is taken lowest first: r0 wins both (u0 wrongly)
    assert "consensus of 4,0: WER 50.00 % (picked r0 2, r4 0)" in out, out
    assert "consensus of 2,4: WER 1300.00 %" in out and "ranks above 0" not in out, out
    done = subprocess.run(
        [sys.executable, str(SCRIPT), *common, "--pool", "2,8"], capture_output=True, text=True
    )
    assert done.returncode == 2 and "--pool: ranks ['r8'] were not decoded" in done.stderr


def test_consensus_of_stored_evaluations(tmp_path: Path) -> None:
    base = _eval(tmp_path / "base", "base", ["the quick fox", "a slow dog", "the quick"])
    low = _eval(tmp_path / "low", "r2", [LOOP, "the quick fox", "the quick fox"])
    high = _eval(tmp_path / "high", "r4", ["the quick fox", "the quick fox", "the slow fox"])
    out = run("consensus", str(base), str(low), str(high))
    # u0: base and r4 agree; u1: r2 and r4; u2: all differ by one word from r2, which wins
    assert "3 utterances decoded by all of base, r2, r4" in out, out
    assert "consensus of these runs: WER 0.00 % (picked base 1, r2 2, r4 0)" in out, out
    assert "against r4 alone (11.11 %): -11.11 points" in out, out
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "consensus", str(base)], capture_output=True, text=True
    )
    assert done.returncode == 2 and "two or more evaluations" in done.stderr
