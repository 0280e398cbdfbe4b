"""``flexispeech prepare synthetic`` killed with SIGKILL part-way (a real subprocess), then
run again: it resumes and ends with the same corpus as an uninterrupted build."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from data_prep.synthetic import prepare_synthetic
from flexispeech.data.corpus import load_corpus

pytestmark = [
    pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs espeak-ng"),
    pytest.mark.slow,
]  # ~16 s: two tiny builds and a kill
ARGS = ["--size", "tiny", "--seed", "3", "--engines", "espeak"]


def digest(corpus: Path) -> tuple[dict[str, str], str]:
    """(audio path -> sha256 of its bytes, the rows as JSON) of every split."""
    files, rows = {}, []
    for ds in load_corpus(corpus).values():
        for row in ds:
            files[row["audio"]] = hashlib.sha256((corpus / row["audio"]).read_bytes()).hexdigest()
            rows.append(row)
    return files, json.dumps(rows, sort_keys=True)


def test_sigkill_then_rerun_gives_the_same_corpus(tmp_path: Path) -> None:
    out = tmp_path / "killed"
    cmd = [
        sys.executable,
        "-m",
        "flexispeech",
        "prepare",
        "synthetic",
        "--out",
        str(out),
        *ARGS,
        "--workers",
        "1",
    ]
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if len(list((out / "audio").rglob("*.wav"))) >= 6 if (out / "audio").is_dir() else False:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the build finished before it could be killed"
        os.killpg(proc.pid, signal.SIGKILL)  # the command and any worker it started
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "corpus.json").exists()  # an interrupted build never looks complete
    # utterances finished before the kill: the wav and its row (written after it) both in place
    done = [
        p
        for wav in sorted((out / "audio").rglob("*.wav"))
        if wav.with_suffix(".json").is_file()
        for p in (wav, wav.with_suffix(".json"))
    ]
    before = {str(p): (p.stat().st_ino, p.stat().st_mtime_ns) for p in done}
    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    # it resumed: every finished utterance kept its file (same inode, never rewritten)
    assert {str(p): (p.stat().st_ino, p.stat().st_mtime_ns) for p in done} == before
    reference = prepare_synthetic(tmp_path / "reference", "tiny", seed=3, workers=1, engines=["espeak"])
    assert digest(out) == digest(reference)
    assert 5 <= len(done) // 2 < len(digest(out)[0])
