"""Convert a CTranslate2 Whisper directory (faster-whisper layout) to a transformers one.

The source holds ``model.bin`` (see :mod:`flexispeech.models.ct2_reader`), ``config.json``
(suppress ids, alignment heads, language ids) and ``tokenizer.json``. The result loads
offline with ``WhisperForConditionalGeneration.from_pretrained``,
``WhisperProcessor.from_pretrained`` and ``GenerationConfig.from_pretrained``, with
float32 safetensors weights. CTranslate2 stores the same tensors as transformers, only
with fused q/k/v projections and other names: no transposes and no query scaling.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from flexispeech.errors import FlexispeechError
from flexispeech.models.cache import atomic_dir
from flexispeech.models.ct2_reader import Ct2Model, read_ct2_model

if TYPE_CHECKING:
    import torch
    from transformers import GenerationConfig, WhisperConfig, WhisperTokenizer

# CTranslate2 spec scalars that transformers' Whisper hard-codes: GELU (activation code 3),
# pre-norm residual blocks, unscaled embeddings, no ALiBi.
EXPECTED_SCALARS = {"activation": 3, "pre_norm": 1, "scale_embeddings": 0, "alibi": 0}
# openai/whisper: a vocabulary of 51865 or more tokens means a multilingual model.
MULTILINGUAL_MIN_VOCAB = 51865
# Timestamp tokens <|0.00|> .. <|30.00|> in steps of 20 ms: 30 / 0.02 + 1 = 1501.
NUM_TIMESTAMPS = 1501
# openai/whisper DecodingOptions.max_initial_timestamp = 1.0 s, i.e. 1.0 / 0.02 = 50.
MAX_INITIAL_TIMESTAMP_INDEX = 50
# Feature extractor of every Whisper up to large-v2: 25 ms windows (n_fft 400) every
# 10 ms (hop 160) at 16 kHz, 30 s chunks; only the number of mel bins varies.
SAMPLING_RATE, N_FFT, HOP_LENGTH, CHUNK_LENGTH = 16_000, 400, 160, 30
LANG_TOKEN = re.compile(r"^<\|[a-z]{2,3}(_[a-z]+)?\|>$|^<\|haw\|>$")


def _layer_count(model: Ct2Model, stack: str) -> int:
    """Number of ``{stack}/layer_i`` blocks in the file."""
    pattern = re.compile(rf"^{stack}/layer_(\d+)/")
    found = {int(m.group(1)) for name in model.variables if (m := pattern.match(name))}
    if found != set(range(len(found))) or not found:
        raise FlexispeechError(f"model.bin: {stack} layers {sorted(found)} are not 0..n-1")
    return len(found)


def _scalar(model: Ct2Model, name: str) -> int:
    return int(model.get(name).reshape(()))


def _split_bias(bias: np.ndarray, parts: int, zero_part: int, name: str) -> list[np.ndarray]:
    """Split a fused bias into ``parts``; the k part is stored as zeros and dropped.

    Whisper's k_proj has no bias; CTranslate2 fuses a zero block in its place. A nonzero
    block would mean a model transformers cannot represent, so it is an error.
    """
    chunks = np.split(bias, parts)
    if np.any(chunks[zero_part] != 0):
        raise FlexispeechError(f"model.bin: {name} has a nonzero key bias; not a Whisper model")
    return chunks


def whisper_state_dict(model: Ct2Model) -> dict[str, np.ndarray]:
    """transformers ``WhisperForConditionalGeneration`` weights (float32) from a CT2 model.

    Returns:
        name -> float32 array; ``proj_out.weight`` is left out (tied to the embeddings).
    """
    out: dict[str, np.ndarray] = {}

    def linear(src: str, dst: str, bias: bool = True) -> None:
        out[f"{dst}.weight"] = model.weight(f"{src}/weight")
        if bias:
            out[f"{dst}.bias"] = model.weight(f"{src}/bias")

    def norm(src: str, dst: str) -> None:
        out[f"{dst}.weight"] = model.weight(f"{src}/gamma")
        out[f"{dst}.bias"] = model.weight(f"{src}/beta")

    def fused(src: str, dsts: list[str], zero_part: int) -> None:
        weights = np.split(model.weight(f"{src}/weight"), len(dsts))
        biases = _split_bias(model.weight(f"{src}/bias"), len(dsts), zero_part, src)
        for i, (dst, w, b) in enumerate(zip(dsts, weights, biases)):
            out[f"{dst}.weight"] = np.ascontiguousarray(w)
            if i != zero_part:
                out[f"{dst}.bias"] = np.ascontiguousarray(b)

    for stack in ("encoder", "decoder"):
        hf = f"model.{stack}"
        out[f"{hf}.embed_positions.weight"] = model.weight(f"{stack}/position_encodings/encodings")
        norm(f"{stack}/layer_norm", f"{hf}.layer_norm")
        for i in range(_layer_count(model, stack)):
            src, dst = f"{stack}/layer_{i}", f"{hf}.layers.{i}"
            sa = f"{dst}.self_attn"
            fused(f"{src}/self_attention/linear_0", [f"{sa}.q_proj", f"{sa}.k_proj", f"{sa}.v_proj"], 1)
            linear(f"{src}/self_attention/linear_1", f"{sa}.out_proj")
            norm(f"{src}/self_attention/layer_norm", f"{dst}.self_attn_layer_norm")
            if stack == "decoder":
                ca = f"{dst}.encoder_attn"
                linear(f"{src}/attention/linear_0", f"{ca}.q_proj")
                fused(f"{src}/attention/linear_1", [f"{ca}.k_proj", f"{ca}.v_proj"], 0)
                linear(f"{src}/attention/linear_2", f"{ca}.out_proj")
                norm(f"{src}/attention/layer_norm", f"{dst}.encoder_attn_layer_norm")
            linear(f"{src}/ffn/linear_0", f"{dst}.fc1")
            linear(f"{src}/ffn/linear_1", f"{dst}.fc2")
            norm(f"{src}/ffn/layer_norm", f"{dst}.final_layer_norm")
    for conv in ("conv1", "conv2"):
        linear(f"encoder/{conv}", f"model.encoder.{conv}")
    out["model.decoder.embed_tokens.weight"] = model.weight("decoder/embeddings/weight")
    return out


def repair_bpe_merges(data: Any) -> list[str]:
    """Add the merges that a byte-level BPE tokenizer file's vocabulary implies but its
    merge list lacks; ``data`` (a parsed ``tokenizer.json``) is changed in place.

    In a GPT-2 style byte-level BPE (Whisper's), every token after the 256 byte tokens is
    made by one merge, and the merges are listed in the order of the ids they make. A file
    without one of them still decodes every id, so transcription looks fine, but encoding
    never forms that token: the packaged whisper-base ``tokenizer.json`` lacks the very
    first merge, ``Ġ t`` (a merges.txt read as if its first line were a ``#version``
    header), so every word starting with " t" (the, to, that, this) came out as ``Ġ`` plus
    the rest, and training labels were token sequences the model never writes. A missing
    merge is recovered as the two parts that the merges before it split the token into.

    Returns:
        The merges added, as ``"left right"``; none for a file that is not a byte-level BPE
        with merges in id order (left as it is).
    """
    model = data.get("model") if isinstance(data, dict) else None
    if not isinstance(model, dict) or model.get("type") != "BPE":
        return []
    vocab, merges = model.get("vocab"), model.get("merges")
    if not isinstance(vocab, dict) or not isinstance(merges, list) or not merges:
        return []
    pairs = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in merges]
    if any(len(p) != 2 for p in pairs):
        return []
    made = [vocab.get(a + b) for a, b in pairs]
    if any(i is None for i in made) or made != sorted(made):
        return []
    rank = dict(zip(pairs, made))  # a merge's priority is the id of the token it makes
    special = {t.get("content") for t in data.get("added_tokens") or [] if isinstance(t, dict)}
    have = set(made)
    missing = sorted(
        (i, t) for t, i in vocab.items() if i >= 256 and len(t) > 1 and t not in special and i not in have
    )
    added: list[str] = []
    for target, token in missing:
        parts = list(token)  # byte-level BPE: every character is one of the 256 byte tokens
        while len(parts) > 1:
            found = [
                (rank[(parts[k], parts[k + 1])], k)
                for k in range(len(parts) - 1)
                if rank.get((parts[k], parts[k + 1]), target) < target
            ]
            if not found:
                break
            k = min(found)[1]
            parts[k : k + 2] = [parts[k] + parts[k + 1]]
        if len(parts) != 2 or any(p not in vocab for p in parts):
            continue  # not the product of one merge of earlier tokens: leave it
        at = next((j for j, i in enumerate(made) if i > target), len(made))
        pair = (parts[0], parts[1])
        merges.insert(at, " ".join(pair) if isinstance(merges[0], str) else list(pair))
        made.insert(at, target)
        rank[pair] = target
        added.append(" ".join(pair))
    return added


def build_tokenizer(tokenizer_json: Path, vocab_size: int) -> WhisperTokenizer:
    """The Whisper tokenizer: control tokens special, plus the 1,501 timestamp tokens;
    BPE merges the file lacks are restored first (``repair_bpe_merges``).

    Raises:
        FlexispeechError: the file is missing or malformed, or after adding timestamps the
            size differs from ``vocab_size``.
    """
    import tempfile

    from transformers import AddedToken, WhisperTokenizer

    if not tokenizer_json.is_file():
        raise FlexispeechError(f"{tokenizer_json}: missing (the converter needs tokenizer.json)")
    try:
        data = json.loads(tokenizer_json.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise FlexispeechError(f"{tokenizer_json}: not a tokenizer file ({err})") from None
    with tempfile.TemporaryDirectory(prefix="flexispeech-tokenizer-") as tmp:
        source = tokenizer_json
        if repair_bpe_merges(data):
            source = Path(tmp) / "tokenizer.json"
            source.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
        try:
            tok = WhisperTokenizer(tokenizer_file=str(source))
        except Exception as err:  # the tokenizers library raises a bare Exception on a malformed file
            raise FlexispeechError(f"{tokenizer_json}: not a tokenizer file ({err})") from None
    control = [t.content for _, t in sorted(tok.added_tokens_decoder.items()) if t.content.startswith("<|")]
    tok.add_special_tokens({"additional_special_tokens": control})
    stamps = [f"<|{i * 0.02:.2f}|>" for i in range(NUM_TIMESTAMPS)]
    tok.add_tokens(
        [AddedToken(s, lstrip=False, rstrip=False, normalized=False, special=False) for s in stamps]
    )
    if len(tok) != vocab_size:
        raise FlexispeechError(
            f"{tokenizer_json}: {len(tok)} tokens with timestamps, but model.bin has {vocab_size} embeddings"
        )
    return tok


def whisper_config(model: Ct2Model, tok: WhisperTokenizer, ct2_config: dict[str, Any]) -> WhisperConfig:
    """A ``WhisperConfig`` whose sizes are read off the tensors."""
    from transformers import WhisperConfig

    for name, expected in EXPECTED_SCALARS.items():
        for stack in ("encoder", "decoder"):
            key = f"{stack}/{name}"
            if model.has(key) and _scalar(model, key) != expected:
                raise FlexispeechError(f"model.bin: {key} = {_scalar(model, key)}, Whisper needs {expected}")
    embed = model.get("decoder/embeddings/weight")
    conv1 = model.get("encoder/conv1/weight")  # [d_model, n_mels, 3]
    eot = tok.convert_tokens_to_ids("<|endoftext|>")
    sot = tok.convert_tokens_to_ids("<|startoftranscript|>")
    return WhisperConfig(
        vocab_size=embed.shape[0],
        num_mel_bins=conv1.shape[1],
        d_model=embed.shape[1],
        encoder_layers=_layer_count(model, "encoder"),
        decoder_layers=_layer_count(model, "decoder"),
        encoder_attention_heads=_scalar(model, "encoder/num_heads"),
        decoder_attention_heads=_scalar(model, "decoder/num_heads"),
        encoder_ffn_dim=model.get("encoder/layer_0/ffn/linear_0/weight").shape[0],
        decoder_ffn_dim=model.get("decoder/layer_0/ffn/linear_0/weight").shape[0],
        max_source_positions=model.get("encoder/position_encodings/encodings").shape[0],
        max_target_positions=model.get("decoder/position_encodings/encodings").shape[0],
        activation_function="gelu",
        scale_embedding=False,
        tie_word_embeddings=True,
        pad_token_id=eot,
        bos_token_id=eot,
        eos_token_id=eot,
        decoder_start_token_id=sot,
        suppress_tokens=list(ct2_config.get("suppress_ids") or []),
        # openai/whisper's default: no blank (220 = " ") and no end of text at the start
        begin_suppress_tokens=list(ct2_config.get("suppress_ids_begin") or [220, eot]),
    )


def generation_config(
    config: WhisperConfig, tok: WhisperTokenizer, ct2_config: dict[str, Any]
) -> GenerationConfig:
    """What ``WhisperForConditionalGeneration.generate`` reads: prompt and suppress ids.

    Multilingual models get ``lang_to_id``/``task_to_id`` and ``task="transcribe"``:
    without a task, transformers drops ``<|transcribe|>`` after language detection and
    the output degenerates. English-only models are marked ``is_multilingual=False``.
    """
    from transformers import GenerationConfig

    ids = tok.convert_tokens_to_ids
    multilingual = config.vocab_size >= MULTILINGUAL_MIN_VOCAB
    heads = ct2_config.get("alignment_heads") or [
        [layer, head]
        for layer in range(config.decoder_layers // 2, config.decoder_layers)
        for head in range(config.decoder_attention_heads)
    ]  # CTranslate2's own default: every head of the last half of the layers
    gen = GenerationConfig(
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
        decoder_start_token_id=config.decoder_start_token_id,
        max_length=config.max_target_positions,
        suppress_tokens=list(config.suppress_tokens),
        begin_suppress_tokens=list(config.begin_suppress_tokens),
    )
    extra: dict[str, Any] = {
        "alignment_heads": [list(map(int, h)) for h in heads],
        "is_multilingual": multilingual,
        "no_timestamps_token_id": ids("<|notimestamps|>"),
        "prev_sot_token_id": ids("<|startofprev|>"),
        "max_initial_timestamp_index": MAX_INITIAL_TIMESTAMP_INDEX,
        "return_timestamps": False,
    }
    if multilingual:
        lang_ids = ct2_config.get("lang_ids") or [
            i for t, i in zip(tok.all_special_tokens, tok.all_special_ids) if LANG_TOKEN.match(t)
        ]
        extra["lang_to_id"] = {tok.convert_ids_to_tokens(int(i)): int(i) for i in lang_ids}
        extra["task_to_id"] = {"transcribe": ids("<|transcribe|>"), "translate": ids("<|translate|>")}
        extra["task"] = "transcribe"
    for key, value in extra.items():
        setattr(gen, key, value)
    return gen


def _to_torch(state: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    import torch

    return {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)) for k, v in state.items()}


def convert_ct2_whisper(src_dir: str | Path, out_dir: str | Path, overwrite: bool = False) -> Path:
    """Convert a CTranslate2 Whisper directory into a transformers directory.

    Writes into a temporary sibling of ``out_dir`` and renames it into place at the end,
    so an interrupted conversion never leaves a directory that looks complete.

    Args:
        src_dir: directory with ``model.bin``, ``config.json`` and ``tokenizer.json``.
        out_dir: the transformers directory to create (must not exist, or be empty).
        overwrite: replace an existing ``out_dir``.

    Returns:
        ``out_dir``: fp32 ``model.safetensors``, ``config.json``,
        ``generation_config.json``, tokenizer and ``preprocessor_config.json``.
    """
    import torch
    from transformers import WhisperFeatureExtractor, WhisperForConditionalGeneration, WhisperProcessor

    src_dir, out_dir = Path(src_dir), Path(out_dir)
    if not overwrite and out_dir.is_dir() and any(out_dir.iterdir()):  # before the conversion's work
        raise FlexispeechError(
            f"{out_dir}: already exists and is not empty (another OUT, or overwrite it: --overwrite)"
        )
    if out_dir.resolve() == src_dir.resolve() or out_dir.resolve() in src_dir.resolve().parents:
        # OUT is replaced whole: the model being converted would be deleted with it
        raise FlexispeechError(
            f"{out_dir}: is or holds the CTranslate2 model {src_dir}; convert into another directory"
        )
    model_bin = read_ct2_model(src_dir / "model.bin")
    if model_bin.spec_name != "WhisperSpec":
        raise FlexispeechError(f"{src_dir / 'model.bin'}: a {model_bin.spec_name}, not a WhisperSpec")
    config_path = src_dir / "config.json"
    ct2_config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    vocab_size = model_bin.get("decoder/embeddings/weight").shape[0]
    tok = build_tokenizer(src_dir / "tokenizer.json", vocab_size)
    config = whisper_config(model_bin, tok, ct2_config)
    state = _to_torch(whisper_state_dict(model_bin))
    state["proj_out.weight"] = state["model.decoder.embed_tokens.weight"]
    # Build on the meta device and adopt the converted tensors: no wasted random init.
    with torch.device("meta"):
        model = WhisperForConditionalGeneration(config)
    model.load_state_dict(state, strict=True, assign=True)
    model.tie_weights()
    model.generation_config = generation_config(config, tok, ct2_config)
    features = WhisperFeatureExtractor(
        feature_size=config.num_mel_bins,
        sampling_rate=SAMPLING_RATE,
        hop_length=HOP_LENGTH,
        chunk_length=CHUNK_LENGTH,
        n_fft=N_FFT,
    )
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        model.save_pretrained(tmp)
        WhisperProcessor(feature_extractor=features, tokenizer=tok).save_pretrained(tmp)
    return out_dir
