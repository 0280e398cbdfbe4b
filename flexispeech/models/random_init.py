"""Tiny random-initialised models with working tokenizers, built offline in milliseconds.

``load("random:tiny")`` of every family comes here. They serve tests and CPU demos: the
weights mean nothing, but shapes, tokenizers, generation configs and the whole code path
(features, labels, loss, beam search, decoding) are those of the real models. Tokenizers
are trained on the fly with the ``tokenizers`` library on a few sentences, since no
pretrained vocabulary file may be assumed to exist offline.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import torch

from flexispeech.audio import SAMPLE_RATE
from flexispeech.errors import ConfigError

SIZES = ("tiny",)
SEED = 0  # fixed: "random:tiny" is the same model every time it is built

CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "please call stella and ask her to bring these things with her from the store",
    "the meeting with doctor smith starts at nine thirty",
    "question what is two plus three answer five",
    "she sells sea shells by the sea shore",
    "a b c d e f g h i j k l m n o p q r s t u v w x y z 0 1 2 3 4 5 6 7 8 9",
]

# Whisper's control tokens, in the order of the real vocabulary (English-only models).
WHISPER_SPECIALS = [
    "<|endoftext|>",
    "<|startoftranscript|>",
    "<|en|>",
    "<|translate|>",
    "<|transcribe|>",
    "<|startoflm|>",
    "<|startofprev|>",
    "<|nocaptions|>",
    "<|notimestamps|>",
]
CHAT_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# SmolLM2's chat template, minus its default system prompt (kept short for tiny models).
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def parse_random_source(source: str) -> str | None:
    """``"random:tiny"`` -> ``"tiny"``; None for any other source; ConfigError on an unknown size."""
    if not source.startswith("random:"):
        return None
    size = source.split(":", 1)[1]
    if size not in SIZES:
        raise ConfigError(f"model {source!r}: unknown random size {size!r}; known: {list(SIZES)}")
    return size


def train_bpe(directory: Path, special_tokens: list[str], vocab_size: int = 300) -> tuple[Path, int]:
    """Train a byte-level BPE (GPT-2 style, as Whisper and SmolLM use) on ``CORPUS``.

    Returns the written ``tokenizer.json`` and its size. The special tokens come after
    the BPE vocabulary, as in Whisper's (its tokenizer takes every id above the last
    special one for a timestamp).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS + [s.capitalize() + "." for s in CORPUS], trainer=trainer)
    tok.add_special_tokens(special_tokens)
    path = directory / "tokenizer.json"
    tok.save(str(path))
    return path, tok.get_vocab_size(with_added_tokens=True)


def _seeded() -> Any:
    """A forked RNG seeded with ``SEED``: the same weights every build, caller's RNG untouched."""
    rng = torch.random.fork_rng(devices=[])
    torch.manual_seed(SEED)
    return rng


def random_whisper(size: str = "tiny") -> tuple[Any, Any]:
    """A 2+2-layer Whisper (d_model 64) with a BPE tokenizer, English-only; (model, processor).

    The encoder keeps Whisper's 1500 positions (30 s of 10-ms frames, downsampled by 2),
    so the audio front end and ``set_audio_ctx`` behave as with the real models.
    """
    from transformers import (
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperProcessor,
    )

    from flexispeech.models.ct2_convert import build_tokenizer, generation_config

    with tempfile.TemporaryDirectory() as tmp:
        path, n_tokens = train_bpe(Path(tmp), WHISPER_SPECIALS)
        tok = build_tokenizer(path, n_tokens + 1501)  # + the 1501 timestamp tokens
    ids = tok.convert_tokens_to_ids
    eot, sot = ids("<|endoftext|>"), ids("<|startoftranscript|>")
    config = WhisperConfig(
        vocab_size=len(tok),
        num_mel_bins=80,
        d_model=64,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=128,
        decoder_ffn_dim=128,
        max_source_positions=1500,
        max_target_positions=128,
        pad_token_id=eot,
        bos_token_id=eot,
        eos_token_id=eot,
        decoder_start_token_id=sot,
        suppress_tokens=[],
        begin_suppress_tokens=[eot],
    )
    with _seeded():
        model = WhisperForConditionalGeneration(config)
    model.generation_config = generation_config(config, tok, {})
    processor = WhisperProcessor(feature_extractor=WhisperFeatureExtractor(feature_size=80), tokenizer=tok)
    return model.eval(), processor


def char_vocab() -> dict[str, int]:
    """The CTC character vocabulary: pad (the CTC blank), unk, ``|`` word delimiter,
    apostrophe and the 26 upper-case letters (as the wav2vec2-base-960h vocabulary)."""
    symbols = ["<pad>", "<unk>", "|", "'"] + [chr(c) for c in range(ord("A"), ord("Z") + 1)]
    return {s: i for i, s in enumerate(symbols)}


def build_processor(vocab: dict[str, int]) -> Any:
    """A ``Wav2Vec2Processor`` for the character ``vocab`` (symbol -> id): ``<pad>`` is the
    CTC blank, ``|`` the word delimiter, ``<unk>`` anything else."""
    from transformers import Wav2Vec2CTCTokenizer, Wav2Vec2FeatureExtractor, Wav2Vec2Processor

    with tempfile.TemporaryDirectory() as tmp:  # the tokenizer only reads a vocab file
        path = Path(tmp) / "vocab.json"
        path.write_text(json.dumps(vocab))
        tokenizer = Wav2Vec2CTCTokenizer(
            str(path),
            unk_token="<unk>",
            pad_token="<pad>",
            word_delimiter_token="|",
            bos_token=None,  # CTC has no sentence markers; without these the tokenizer adds <s> and </s>
            eos_token=None,
            do_lower_case=False,
        )
    features = Wav2Vec2FeatureExtractor(
        feature_size=1,
        sampling_rate=SAMPLE_RATE,
        padding_value=0.0,
        do_normalize=True,
        return_attention_mask=True,
    )
    return Wav2Vec2Processor(feature_extractor=features, tokenizer=tokenizer)


def random_wav2vec2(size: str = "tiny") -> tuple[Any, Any]:
    """A 2-layer Wav2Vec2ForCTC (hidden 32) with the character vocabulary; (model, processor)."""
    from transformers import Wav2Vec2Config, Wav2Vec2ForCTC

    processor = build_processor(char_vocab())
    config = Wav2Vec2Config(
        vocab_size=len(processor.tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        conv_dim=(32, 32, 32),
        conv_stride=(5, 4, 4),  # 80 samples = 5 ms per frame: enough frames for CTC on short clips
        conv_kernel=(10, 4, 4),
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2,
        pad_token_id=processor.tokenizer.pad_token_id,
        ctc_loss_reduction="mean",
        ctc_zero_infinity=True,
        mask_time_prob=0.0,
        # Layer-norm front end (as the large "lv60" models): padding is masked, so a clip
        # gives the same output alone or in a padded batch.
        feat_extract_norm="layer",
        do_stable_layer_norm=True,
    )
    with _seeded():
        model = Wav2Vec2ForCTC(config)
    return model.eval(), processor


def random_causal_lm(size: str = "tiny", chat_template: bool = True) -> tuple[Any, Any]:
    """A 2-layer Llama (hidden 32) with a BPE tokenizer and, by default, a ChatML template
    (SmolLM2's format); ``chat_template=False`` gives a plain tokenizer. (model, tokenizer)."""
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    with tempfile.TemporaryDirectory() as tmp:
        path, _ = train_bpe(Path(tmp), CHAT_SPECIALS)
        tok = PreTrainedTokenizerFast(
            tokenizer_file=str(path), eos_token="<|im_end|>", pad_token="<|endoftext|>", bos_token=None
        )
    if chat_template:
        tok.chat_template = CHAT_TEMPLATE
    else:
        tok.eos_token = "<|endoftext|>"
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=256,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        bos_token_id=None,
        tie_word_embeddings=True,
    )
    with _seeded():
        model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    return model.eval(), tok


def randomize_adapters(model: Any, seed: int = 0, b_scale: float = 0.1) -> None:
    """Give every Flexi-LoRA layer random ``A`` and non-zero random ``B`` (a fresh adapter
    has ``B = 0`` and is the identity), so that ranks change outputs: for tests of rank
    routing through loss and decoding, and for speed measurements."""
    from flexispeech.lora.inject import flexi_layers

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, layer in flexi_layers(model):
            layer.lora_A.copy_(torch.randn(layer.lora_A.shape, generator=gen))
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=gen) * b_scale)
