"""A merged Whisper directory to a CTranslate2 one, by CTranslate2's own converter.

The output is what ``ctranslate2.models.Whisper(OUT)`` and ``faster_whisper.WhisperModel(OUT)``
load: ``model.bin``, ``config.json`` (suppress ids, alignment heads), ``vocabulary.json``,
plus ``tokenizer.json`` and ``preprocessor_config.json`` copied from the merged model, so
that faster-whisper needs no model hub for its tokenizer or its mel settings.
"""

from __future__ import annotations

from pathlib import Path

from flexispeech.errors import ConfigError, FlexispeechError

# CTranslate2's weight types (ct2-transformers-converter --quantization). float32 keeps
# greedy decoding token for token equal to the merged transformers model.
QUANTIZATIONS = (
    "float32",
    "float16",
    "bfloat16",
    "int16",
    "int8",
    "int8_float32",
    "int8_float16",
    "int8_bfloat16",
)
# Files faster-whisper reads beside model.bin (it falls back to the hub without them).
COPIED_FILES = ("tokenizer.json", "preprocessor_config.json")


def require_ctranslate2() -> None:
    """Raise one clear line when CTranslate2 is not installed."""
    try:
        import ctranslate2  # noqa: F401
    except ImportError:
        raise FlexispeechError(
            "--to ct2 needs CTranslate2, which is not installed: pip install ctranslate2"
        ) from None


def write_ct2(merged_dir: str | Path, out_dir: str | Path, quantization: str = "float32") -> Path:
    """Convert the transformers Whisper in ``merged_dir`` into ``out_dir`` (replaced if it exists)."""
    if quantization not in QUANTIZATIONS:
        raise ConfigError(f"--quantization: expected one of {list(QUANTIZATIONS)}, got {quantization!r}")
    require_ctranslate2()
    from ctranslate2.converters import TransformersConverter

    merged_dir = Path(merged_dir)
    missing = [name for name in COPIED_FILES if not (merged_dir / name).is_file()]
    if missing:
        raise FlexispeechError(f"{merged_dir}: no {missing} to copy beside model.bin")
    converter = TransformersConverter(str(merged_dir), copy_files=list(COPIED_FILES))
    converter.convert(str(out_dir), quantization=quantization, force=True)
    return Path(out_dir)
