"""recipes/synthetic/joint_offline.py serves the joint pick again from stored scores under
other rules (a weight on the base model's score, scores per token)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "recipes" / "synthetic" / "joint_offline.py"
LOOP = "the quick the quick " * 20


def note(base: str, adapted: str, scores: list[list[float]], picked: int) -> dict:
    """A joint note of ranks 0 and 4; ``scores[c][k]``: candidate c (0: base) at rank k."""
    keys = ("0", "4")
    return {
        "hyps": {"0": base, "4": adapted},
        "picked": picked,
        "routed_rank": 4,
        "routed_hyp": adapted,
        "scores": {c: {k: scores[i][j] for j, k in enumerate(keys)} for i, c in enumerate(keys)},
    }


def write_eval(path: Path, fallback: bool) -> Path:
    ref = "the quick brown fox"
    rows = [
        # the base model's short transcript wins the sum (-9 against -10) only through its
        # weight; per token the adapter's (4 words) is likelier
        ("u0", note("the fox", ref, [[-3.0, -6.0], [-6.0, -4.0]], picked=0), "the fox"),
        # the adapter's transcript wins at every weight
        ("u1", note("a quick fox", ref, [[-9.0, -9.0], [-4.0, -2.0]], picked=4), ref),
        # the adapter's loop wins the pick at weight 0 only; the fallback then serves rank 0
        ("u2", note(ref, LOOP, [[-2.0, -8.0], [-9.0, -1.0]], picked=0), ref),
        # transcripts agreed: nothing scored, nothing changes
        ("u3", {"hyps": {"0": ref, "4": ref}, "picked": 4, "routed_rank": 4, "routed_hyp": ref}, ref),
    ]
    # u0 and u3 are clean (30 dB), u1 and u2 noisy (5 dB), as their stored routing signals say
    snr = {"u0": 30.0, "u1": 5.0, "u2": 5.0, "u3": 30.0}
    utts = [
        {"id": i, "ref": ref, "hyp": hyp, "rank": 4, "joint": n, "signals": {"snr_db": snr[i]}}
        for i, n, hyp in rows
    ]
    errors = 2 + 0 + 0 + 0  # "the fox": 2 deletions
    run = {
        "name": "static_joint",
        "model": "random:tiny",
        "fallback": {"rank": 0} if fallback else None,
        "overall": {"wer": errors / 16},
        "utterances": utts,
    }
    path.mkdir()
    (path / "results.json").write_text(json.dumps(run))
    return path


def run(*args: str) -> str:
    done = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout


def rows(out: str) -> dict[str, list[str]]:
    return {
        cells[0]: cells[1:]
        for line in out.splitlines()
        if line.startswith("| ") and not line.startswith("| rule") and "---" not in line
        for cells in [[c.strip() for c in line.strip("|").split("|")]]
    }


def test_weights_and_per_token_rules_repick_from_the_stored_scores(tmp_path: Path) -> None:
    """Weight 1 is what eval served (WER 12.5 %, 2 base picks, no change); weight 0 serves the
    adapter's transcripts (u0 gains 2 words; u2's loop falls back to the base model's
    transcript, 0 errors); per token u0 goes to the adapter too. Fails if a weight is put on
    the wrong rank, the fallback is skipped or the scores are not divided by token counts."""
    out = rows(run(str(write_eval(tmp_path / "e", fallback=True)), "--weights", "0,1"))
    assert out["sum, base weight 1"] == ["12.5", "2", "0 / 0, p = 1"], out
    assert out["sum, base weight 0"] == ["0.0", "0", "1 / 0, p = 1"], out
    assert out["per token"][0] == "0.0" and out["per token"][2].startswith("1 / 0"), out


def test_without_the_fallback_a_looping_pick_is_served(tmp_path: Path) -> None:
    out = rows(run(str(write_eval(tmp_path / "e", fallback=False)), "--weights", "0", "--no-per-token"))
    wer, base, pair = out["sum, base weight 0"]
    assert float(wer) > 100 and base == "0" and pair.startswith("1 / 1"), out


def test_an_evaluation_without_scores_is_named(tmp_path: Path) -> None:
    path = tmp_path / "plain"
    path.mkdir()
    utts = [{"id": "u0", "ref": "a", "hyp": "a", "rank": 4}]
    (path / "results.json").write_text(json.dumps({"name": "x", "utterances": utts, "overall": {"wer": 0}}))
    done = subprocess.run([sys.executable, str(SCRIPT), str(path)], capture_output=True, text=True)
    assert done.returncode == 2 and "no utterance has joint-pick scores" in done.stderr
    assert "Traceback" not in done.stderr


def test_budget_names_the_largest_weight_within_it(tmp_path: Path) -> None:
    """Weights 0 and 0.5 serve 0.0 % here, weight 1 12.5 %: a 5-point budget stops at 0.5,
    a 20-point one takes 1."""
    path = str(write_eval(tmp_path / "e", fallback=True))
    out = run(path, "--weights", "0,0.5,1", "--no-per-token", "--budget", "5")
    assert rows(out)["sum, base weight 0.5"][0] == "0.0", out
    assert "largest base weight within 5 points of weight 0's 0.0 %: 0.5" in out, out
    out = run(path, "--weights", "0,0.5,1", "--no-per-token", "--budget", "20")
    assert "within 20 points of weight 0's 0.0 %: 1" in out, out


def test_a_condition_gives_the_base_model_its_vote_only_where_it_holds(tmp_path: Path) -> None:
    """Where the clean utterances keep the base model's vote (snr_db>=20) u0 is served the
    base transcript (2 errors, as at weight 1) and u2's loop falls back as at weight 0; where
    only the noisy ones do (snr_db<=10) u0 gets the adapter's (0 errors) and u2 the base
    model's. Fails if the condition is read the wrong way round or ignored."""
    path = str(write_eval(tmp_path / "e", fallback=True))
    out = rows(run(path, "--weights", "1", "--no-per-token", "--where", "snr_db>=20,snr_db<=10"))
    assert out["base votes where snr_db>=20"] == ["12.5", "1", "0 / 0, p = 1"], out
    assert out["base votes where snr_db<=10"] == ["0.0", "1", "1 / 0, p = 1"], out


def test_a_bad_condition_or_a_missing_signal_is_one_line(tmp_path: Path) -> None:
    path = str(write_eval(tmp_path / "e", fallback=True))
    for where, message in (("snr_db=20", "SIGNAL>=T or SIGNAL<=T"), ("proxy_entropy<=1", "no stored signal")):
        done = subprocess.run(
            [sys.executable, str(SCRIPT), path, "--no-per-token", "--where", where],
            capture_output=True,
            text=True,
        )
        assert done.returncode == 2 and message in done.stderr, done.stderr
        assert "Traceback" not in done.stderr
