"""kill -9 in the middle of training, then --resume: the run really resumes (it starts after the
checkpoint's step and recomputes nothing before it) and ends with the adapter of an
uninterrupted run, bit for bit."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_train_eval import corpus  # noqa: F401  (module-scoped fixture: a tiny corpus)

from flexispeech.training.checkpoint import STATE_NAME, find_checkpoint


def train_cmd(corpus_dir: Path, out: Path, mode: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "flexispeech",
        "train",
        "--no-progress",
        f"output_dir={out}",
        f"name={mode}",
        "model.source=random:tiny",
        "model.audio_ctx=100",
        f"data.corpus={corpus_dir}",
        "train.batch_size=2",
        "train.max_steps=14",
        "train.save_every=2",
        "train.log_every=1",
        "train.warmup_steps=2",
        "train.lr=1e-2",
        "adapter.ranks=[0, 2, 4, 8]",
        "adapter.dropout=0.1",
        f"routing.mode={mode}",
        "routing.weights={snr_db: -1.0}",
        "--resume",
    ]


def run_env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2]) + os.pathsep + env.get("PYTHONPATH", "")
    return env


@pytest.mark.parametrize("mode", ["random", "threshold"])
def test_kill_then_resume_matches_uninterrupted(corpus, tmp_path: Path, mode: str) -> None:  # noqa: F811
    straight = tmp_path / "straight"
    subprocess.run(train_cmd(corpus, straight, mode), check=True, env=run_env(), capture_output=True)

    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        train_cmd(corpus, killed, mode), env=run_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 120
    while not (killed / "checkpoint" / "trainer_state.pt").exists():
        assert proc.poll() is None, "training ended before its first checkpoint"
        assert time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "adapter").exists()  # it really died mid-run
    ckpt = find_checkpoint(killed)
    at_step = torch.load(ckpt / STATE_NAME, weights_only=False)["trainer"]["step"]
    assert 2 <= at_step < 14
    resumed = subprocess.run(
        train_cmd(corpus, killed, mode), check=True, env=run_env(), capture_output=True, text=True
    )

    # It resumed: it says so, starts at the checkpoint's step + 1 and ran only the steps after it.
    assert f"resumed from {ckpt} at step {at_step}" in resumed.stdout
    summary = json.loads((killed / "train_summary.json").read_text())
    assert summary["resumed"] == {"from": str(ckpt), "step": at_step}
    assert summary["steps"] == 14 and summary["steps_run"] == 14 - at_step
    log = [json.loads(line)["step"] for line in (killed / "train_log.jsonl").read_text().splitlines()]
    assert log == list(range(1, 15))  # the killed run's lines up to the checkpoint, then the resumed run's
    straight_summary = json.loads((straight / "train_summary.json").read_text())
    assert (
        straight_summary["resumed"] is None and straight_summary["steps_run"] == 14
    )  # --resume with nothing to resume from

    a = load_file(str(straight / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(killed / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=0)
