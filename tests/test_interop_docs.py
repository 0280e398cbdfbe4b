"""Every block of docs/interop.md runs as written, with its first line (the values to
change) set to a tiny random Whisper's adapter, corpus or PEFT LoRA."""

from __future__ import annotations

import copy
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from flexispeech import (
    FlexiLoraConfig,
    ThresholdRouter,
    attach_router,
    inject,
    load_adapter,
    save_adapter,
    use_ranks,
)
from flexispeech.data.corpus import write_corpus
from flexispeech.models.random_init import randomize_adapters
from flexispeech.models.whisper import FAMILY

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "interop.md"


def blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", DOC.read_text(), re.S)


def with_first_line(block: str, first: str) -> str:
    return first + "\n" + block.split("\n", 1)[1]


@pytest.fixture(scope="module")
def adapter(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An adapter with a router for a random tiny Whisper saved in a directory (its base,
    recorded in the adapter). The decoder has Whisper's 448 positions: faster-whisper
    decodes up to 448 tokens whatever the model, and a random model never stops early."""
    from transformers import WhisperForConditionalGeneration

    root = tmp_path_factory.mktemp("doc")
    tiny, processor = FAMILY.load("random:tiny")
    config = copy.deepcopy(tiny.config)
    config.max_target_positions = 448
    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(config).eval()
    model.generation_config = copy.deepcopy(tiny.generation_config)
    model.generation_config.max_length = 448
    model.save_pretrained(root / "model")
    processor.save_pretrained(root / "model")
    config = FlexiLoraConfig(
        ranks=(0, 2, 8), target_modules=FAMILY.default_targets, metadata={"base_model": str(root / "model")}
    )
    inject(model, config)
    randomize_adapters(model, b_scale=0.5)
    attach_router(model, ThresholdRouter(ranks=(2, 8), weights={"duration": 1.0}, thresholds=[2.75]))
    return save_adapter(model, root / "adapter")


def run_bash(block: str, cwd: Path) -> str:
    # `flexispeech` and `python` as this test's interpreter (a fresh clone has them on PATH after make install).
    prelude = f'flexispeech() {{ "{sys.executable}" -m flexispeech "$@"; }}\npython() {{ "{sys.executable}" "$@"; }}\n'
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
    }
    proc = subprocess.run(
        ["bash", "-e", "-c", prelude + block], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_ct2_block(adapter: Path, tmp_path: Path) -> None:
    pytest.importorskip("ctranslate2")
    pytest.importorskip("faster_whisper")
    block = blocks("bash")[0]
    (tmp_path / "tests" / "assets").mkdir(parents=True)
    (tmp_path / "tests" / "assets" / "fox.wav").symlink_to(ROOT / "tests" / "assets" / "fox.wav")
    out = run_bash(with_first_line(block, f"ADAPTER={adapter} RANK=2"), tmp_path)
    assert out.splitlines()[0].startswith("whisper-ct2: ct2 (float32) at rank 2 in ")
    assert (tmp_path / "whisper-ct2" / "model.bin").is_file()


def test_per_rank_block(adapter: Path, tmp_path: Path) -> None:
    pytest.importorskip("ctranslate2")
    block = blocks("bash")[1]
    (tmp_path / "tests" / "assets").mkdir(parents=True)
    (tmp_path / "tests" / "assets" / "fox.wav").symlink_to(ROOT / "tests" / "assets" / "fox.wav")
    out = run_bash(with_first_line(block, f"ADAPTER={adapter}"), tmp_path)
    assert out.splitlines()[-1] == "whisper-routed/rank-2"  # fox.wav is 2.73 s: the router's rank 2


def test_trainer_block(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "corpus" / "audio").mkdir(parents=True)
    rows = []
    for i, snr in enumerate([0.0, 10.0, 20.0, 30.0]):
        audio = (0.1 * np.sin(np.arange(16000) * (0.06 + 0.02 * i))).astype(np.float32)
        sf.write(tmp_path / "corpus" / "audio" / f"u{i}.wav", audio, 16000)
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
            }
        )
    corpus = write_corpus(rows, tmp_path / "corpus", name="doc")
    monkeypatch.chdir(tmp_path)
    first = f'MODEL, CORPUS, OUT, STEPS, AUDIO_CTX = "random:tiny", "{corpus}", "exp/hf", 2, 50'
    block = with_first_line(blocks("python")[0], first)
    exec(compile(block, "interop.md", "exec"), {"__name__": "__main__"})
    assert (tmp_path / "exp" / "hf" / "adapter" / "router.json").is_file()
    assert (tmp_path / "exp" / "hf" / "checkpoint-2" / "adapter_model.safetensors").is_file()


def test_peft_block(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from peft import LoraConfig, get_peft_model

    base, _ = FAMILY.load("random:tiny")
    peft_model = get_peft_model(
        copy.deepcopy(base), LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"])
    )
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.05)
    peft_model.save_pretrained(str(tmp_path / "peft"))
    monkeypatch.chdir(tmp_path)
    block = with_first_line(blocks("python")[1], 'MODEL, PEFT_DIR, OUT = "random:tiny", "peft", "flexi"')
    exec(compile(block, "interop.md", "exec"), {"__name__": "__main__"})
    model, _ = FAMILY.load("random:tiny")
    load_adapter(model, tmp_path / "flexi")
    features = torch.randn(1, 80, 3000)
    ids = torch.tensor([[1, 2, 3]])
    with torch.no_grad(), use_ranks(model, 8):
        torch.testing.assert_close(
            model(input_features=features, decoder_input_ids=ids).logits,
            peft_model(input_features=features, decoder_input_ids=ids).logits,
            rtol=1e-4,
            atol=1e-4,
        )
