"""Two training processes (gloo, CPU) end with the adapter of one process with the same global batch."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml
from safetensors.torch import load_file

from flexispeech.data.corpus import write_corpus
from flexispeech.training.config import load_config, to_dict

ROOT = Path(__file__).resolve().parents[2]


def equal_length_corpus(root: Path) -> Path:
    """8 one-second utterances with the same text: every example has the same number of
    frames and label tokens, so the mean of per-process token means is the global mean."""
    (root / "audio").mkdir(parents=True)
    rows = []
    for i in range(8):
        t = np.arange(16000) / 16000
        audio = (0.1 * np.sin(2 * np.pi * (150 + 40 * i) * t)).astype(np.float32)
        sf.write(root / "audio" / f"u{i}.wav", audio, 16000)
        snr = 3.0 * i
        rows.append(
            {
                "id": f"u{i}",
                "audio": f"audio/u{i}.wav",
                "text": "the quick brown fox",
                "duration": 1.0,
                "speaker": "v0",
                "split": "train",
                "snr_db": snr,
                "signal_snr_db": snr,
                "signal_duration": 1.0,
                "signal_proxy": -snr / 10,
            }
        )
    return write_corpus(rows, root, name="equal")


def write_config(corpus: Path, out: Path, batch_size: int) -> Path:
    overrides = [
        f"output_dir={out}",
        "name=mp",
        "model.source=random:tiny",
        f"data.corpus={corpus}",
        "model.audio_ctx=100",
        f"train.batch_size={batch_size}",
        "train.max_steps=3",
        "train.warmup_steps=1",
        "train.log_every=1",
        "train.lr=1e-2",
        "train.bucket_by_length=false",
        "adapter.ranks=[0, 2, 4, 8]",
        "adapter.dropout=0.0",
        "routing.mode=threshold",
        "routing.weights={snr_db: -1.0}",
        "routing.features=[snr_db]",
    ]
    path = out.parent / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(to_dict(load_config(None, overrides))))
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(config: Path, nproc: int) -> None:
    # ACCELERATE_USE_CPU is what `accelerate launch --cpu` sets: gloo on CPU, no code change.
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "CUDA_VISIBLE_DEVICES": "",
        "ACCELERATE_USE_CPU": "true",
        "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    }
    cmd = [sys.executable, "-m", "flexispeech", "train", "--config", str(config), "--no-progress"]
    if nproc > 1:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            str(nproc),
            "--master_addr",
            "127.0.0.1",
            "--master_port",
            str(free_port()),
            "-m",
        ] + cmd[2:]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]


@pytest.mark.slow
def test_two_gloo_processes_equal_one_process_with_the_same_global_batch(tmp_path: Path) -> None:
    corpus = equal_length_corpus(tmp_path / "data")
    launch(write_config(corpus, tmp_path / "single", batch_size=4), nproc=1)
    launch(write_config(corpus, tmp_path / "ddp", batch_size=2), nproc=2)
    single = load_file(str(tmp_path / "single" / "adapter" / "adapter_model.safetensors"))
    ddp = load_file(str(tmp_path / "ddp" / "adapter" / "adapter_model.safetensors"))
    assert single.keys() == ddp.keys() and single
    assert any(torch.count_nonzero(v) for k, v in single.items() if "lora_B" in k)  # training moved B
    for key in single:
        torch.testing.assert_close(ddp[key], single[key], rtol=1e-4, atol=1e-5, msg=key)
    summary = (tmp_path / "ddp" / "train_summary.json").read_text()
    assert '"processes": 2' in summary and '"examples_seen": 12' in summary
