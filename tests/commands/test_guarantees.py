"""The rows of docs/guarantees.md that name several commands, for the commands the other
tests leave out: each bad input is one error line from every command the row names, and
odd-but-valid input is no error. In-process (``flexispeech.cli.main``) on a random tiny
Whisper, so the file runs in seconds."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from flexispeech.cli import main
from flexispeech.data.corpus import load_corpus, write_corpus
from flexispeech.errors import FlexispeechError

SR = 16_000
TINY = ["--model", "random:tiny", "--audio-ctx", "150"]
FAST = [*TINY, "--max-new-tokens", "3"]


def tone(seconds: float, freq: float = 300.0) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (0.2 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two test utterances: a tone and digital silence."""
    root = tmp_path_factory.mktemp("corpus")
    (root / "audio").mkdir()
    sf.write(root / "audio" / "tone.wav", tone(0.6), SR)
    sf.write(root / "audio" / "silent.wav", np.zeros(int(0.6 * SR), np.float32), SR)
    rows = [
        {
            "id": n,
            "audio": f"audio/{n}.wav",
            "text": "call stella",
            "duration": 0.6,
            "speaker": "s",
            "split": "test",
        }
        for n in ("tone", "silent")
    ]
    return write_corpus(rows, root, name="guarantees")


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved adapter (ranks 0, 2, 8) on the random tiny Whisper, with a fixed-rank router."""
    from flexispeech import FlexiLoraConfig, inject, save_adapter
    from flexispeech.lora import attach_router
    from flexispeech.lora.router import FixedRouter
    from flexispeech.models.whisper import FAMILY

    model, _ = FAMILY.load("random:tiny")
    window = {
        "audio_ctx": int(TINY[TINY.index("--audio-ctx") + 1])
    }  # served at its own window: no warning line
    inject(model, FlexiLoraConfig(ranks=(0, 2, 8), target_modules=FAMILY.default_targets, metadata=window))
    attach_router(model, FixedRouter(2))
    return save_adapter(model, tmp_path_factory.mktemp("adapter") / "adapter")


# -- silent audio is not an error (signals; transcribe and stream: test_bad_input) ---------


def test_signals_on_silent_audio_is_not_an_error(corpus: Path, capsys) -> None:
    assert main(["signals", str(corpus), "--splits", "test", "--force"]) == 0
    out, err = capsys.readouterr()
    assert "skipped" not in out + err and "Traceback" not in err
    ds = load_corpus(corpus, "test")
    silent = ds[[r["id"] for r in ds].index("silent")]
    assert silent["signal_speech_activity"] == 0.0 and math.isfinite(silent["signal_snr_db"])
    assert silent["signal_duration"] == pytest.approx(0.6)


# -- NaN / inf samples: one line from transcribe and stream ----------------------------------


@pytest.mark.parametrize("command", ["transcribe", "stream"])
def test_infinite_samples_are_one_line(tmp_path: Path, error_line, command: str) -> None:
    path = tmp_path / "inf.wav"
    sf.write(
        path, np.where(np.arange(SR // 2) == 10, np.inf, tone(0.5)).astype(np.float32), SR, subtype="FLOAT"
    )
    # transcribe is a batch job: a bad file is reported and counted, and the exit status is 1
    batch = command == "transcribe"
    assert main([command, str(path), *(FAST if batch else TINY)]) == (1 if batch else 2)
    error_line(command, "inf.wav", "infinite")


# -- adapters: another base model (eval, stream), corrupt or missing files (eval) -----------


def _wider_adapter(adapter_dir: Path, dst: Path) -> tuple[Path, tuple[int, ...]]:
    """A copy of the adapter whose first lora_A is 3 columns wider, as if its base were."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    shutil.copytree(adapter_dir, dst)
    weights = load_file(dst / "adapter_model.safetensors")
    name = sorted(k for k in weights if k.endswith("lora_A"))[0]
    weights[name] = torch.cat([weights[name], weights[name][:, :3]], dim=1).contiguous()
    save_file(weights, dst / "adapter_model.safetensors")
    return dst, tuple(weights[name].shape)


@pytest.mark.parametrize("command", ["eval", "stream"])
def test_adapter_for_another_base_model_names_the_shape(
    adapter_dir: Path, corpus: Path, assets_dir: Path, tmp_path: Path, error_line, command: str
) -> None:
    other, shape = _wider_adapter(adapter_dir, tmp_path / "other")
    target = ["--data", str(corpus)] if command == "eval" else [str(assets_dir / "fox.wav")]
    assert main([command, *target, *TINY, "--adapter", str(other)]) == 2
    error_line(command, str(other), "shape", str(shape))


def test_eval_with_corrupt_or_missing_adapter_weights(
    adapter_dir: Path, corpus: Path, tmp_path: Path, error_line
) -> None:
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(adapter_dir, bad)
    (bad / "adapter_model.safetensors").write_bytes(b"\x00garbage")
    assert main(["eval", "--data", str(corpus), *FAST, "--adapter", str(bad)]) == 2
    error_line("eval", "adapter_model.safetensors")
    assert main(["eval", "--data", str(corpus), *FAST, "--adapter", str(tmp_path / "none")]) == 2
    error_line("eval", str(tmp_path / "none"))


# -- a rank outside the configured set: train (transcribe: test_bad_input) -----------------


def test_train_rank_outside_the_adapters_set(corpus: Path, tmp_path: Path, error_line) -> None:
    overrides = [
        f"output_dir={tmp_path / 'run'}",
        "model.source=random:tiny",
        "model.audio_ctx=100",
        f"data.corpus={corpus}",
        "data.train_split=test",
        "adapter.ranks=[2, 4]",
        "routing.mode=fixed",
        "routing.rank=3",
        "train.max_steps=1",
    ]
    assert main(["train", *overrides, "--no-progress"]) == 2
    error_line("train", "routing.rank", "3", "[2, 4]")
    assert not (tmp_path / "run" / "adapter").exists()


# -- a device this machine lacks: every command that takes --device (transcribe: test_bad_input)


@pytest.mark.parametrize("command", ["stream", "eval", "signals", "serve"])
def test_unavailable_device_is_one_line(corpus: Path, assets_dir: Path, error_line, command: str) -> None:
    args = {
        "stream": [str(assets_dir / "fox.wav"), *TINY],
        "eval": ["--data", str(corpus), *FAST],
        "signals": [str(corpus), "--splits", "test", *TINY],
        "serve": [*TINY, "--port", "1"],  # fails while loading, before it would listen
    }[command]
    assert main([command, *args, "--device", "cuda:99"]) == 2  # no machine has a hundred GPUs
    error_line(command, "--device", "cuda:99")


# -- --debug keeps the traceback -------------------------------------------------------------


def test_debug_shows_the_traceback_instead(tmp_path: Path) -> None:
    with pytest.raises(FlexispeechError, match="not a flexispeech corpus"):
        main(["--debug", "signals", str(tmp_path)])
