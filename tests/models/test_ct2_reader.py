"""The CTranslate2 model.bin reader, on files written here byte by byte."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from flexispeech.errors import FlexispeechError
from flexispeech.models.ct2_reader import read_ct2_model

CODES = {
    np.dtype("float32"): 0,
    np.dtype("int8"): 1,
    np.dtype("int16"): 2,
    np.dtype("int32"): 3,
    np.dtype("float16"): 4,
}


def _str(text: str) -> bytes:
    raw = text.encode() + b"\0"
    return struct.pack("<H", len(raw)) + raw


def write_model_bin(
    path: Path, variables: dict[str, np.ndarray], aliases: dict[str, str], version: int = 6
) -> bytes:
    """An independent writer of the layout the reader parses; returns the bytes."""
    out = struct.pack("<I", version) + _str("WhisperSpec") + struct.pack("<II", 3, len(variables))
    for name, value in variables.items():
        raw = np.ascontiguousarray(value).tobytes()
        out += _str(name) + struct.pack("<B", value.ndim) + struct.pack(f"<{value.ndim}I", *value.shape)
        if version >= 4:
            out += struct.pack("<BI", CODES[value.dtype], len(raw))
        else:
            out += struct.pack("<BI", value.dtype.itemsize, value.size)
        out += raw
    out += struct.pack("<I", len(aliases))
    for alias, target in aliases.items():
        out += _str(alias) + _str(target)
    path.write_bytes(out)
    return out


@pytest.fixture
def variables() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "decoder/embeddings/weight": rng.normal(size=(5, 3)).astype(np.float16),
        "encoder/ffn/linear_0/weight": np.array([[12, -127, 3], [100, 0, -5]], dtype=np.int8),
        "encoder/ffn/linear_0/weight_scale": np.array([4.0, 50.0], dtype=np.float32),
        "encoder/layer_norm/gamma": np.array([1.5, -2.25, 0.0], dtype=np.float32),
        "decoder/num_heads": np.array(6, dtype=np.int16),
    }


def test_reads_f16_int8_scale_and_alias(tmp_path: Path, variables: dict[str, np.ndarray]) -> None:
    write_model_bin(
        tmp_path / "model.bin", variables, {"decoder/projection/weight": "decoder/embeddings/weight"}
    )
    model = read_ct2_model(tmp_path)  # a directory is accepted as well as the file
    assert (model.version, model.spec_name, model.revision) == (6, "WhisperSpec", 3)
    assert set(model.variables) == set(variables)
    emb = model.get("decoder/projection/weight")
    assert emb.dtype == np.float16 and np.array_equal(emb, variables["decoder/embeddings/weight"])
    assert model.has("decoder/projection/weight") and not model.has("decoder/projection/bias")
    np.testing.assert_array_equal(
        model.weight("encoder/ffn/linear_0/weight"),
        np.array([[3.0, -31.75, 0.75], [2.0, 0.0, -0.1]], dtype=np.float32),
    )
    assert model.weight("decoder/projection/weight").dtype == np.float32
    assert int(model.get("decoder/num_heads")) == 6
    np.testing.assert_array_equal(model.weight("encoder/layer_norm/gamma"), [1.5, -2.25, 0.0])


def test_reads_version_3_item_widths(tmp_path: Path, variables: dict[str, np.ndarray]) -> None:
    del variables["decoder/embeddings/weight"]  # version 3 had no float16
    write_model_bin(tmp_path / "model.bin", variables, {"alias": "encoder/layer_norm/gamma"}, version=3)
    model = read_ct2_model(tmp_path / "model.bin")
    assert model.version == 3 and model.aliases == {"alias": "encoder/layer_norm/gamma"}
    np.testing.assert_array_equal(model.weight("alias"), [1.5, -2.25, 0.0])
    assert model.get("encoder/ffn/linear_0/weight").dtype == np.int8


def test_rejects_truncated_padded_and_misjoined_files(
    tmp_path: Path, variables: dict[str, np.ndarray]
) -> None:
    data = write_model_bin(tmp_path / "good.bin", variables, {"a": "decoder/embeddings/weight"})
    (tmp_path / "short.bin").write_bytes(data[:-7])
    with pytest.raises(FlexispeechError, match="short.bin: truncated"):
        read_ct2_model(tmp_path / "short.bin")
    (tmp_path / "long.bin").write_bytes(data + b"\0\0")
    with pytest.raises(FlexispeechError, match="long.bin: 2 bytes left"):
        read_ct2_model(tmp_path / "long.bin")
    half = len(data) // 2  # a split file joined part2 + part1
    (tmp_path / "swapped.bin").write_bytes(data[half:] + data[:half])
    with pytest.raises(FlexispeechError, match="swapped.bin"):
        read_ct2_model(tmp_path / "swapped.bin")
    with pytest.raises(FlexispeechError, match="no CTranslate2 model.bin"):
        read_ct2_model(tmp_path / "missing")


def test_integer_weight_without_scale_is_an_error(tmp_path: Path) -> None:
    write_model_bin(tmp_path / "model.bin", {"w": np.ones((2, 2), dtype=np.int8)}, {})
    with pytest.raises(FlexispeechError, match="w_scale"):
        read_ct2_model(tmp_path).weight("w")
