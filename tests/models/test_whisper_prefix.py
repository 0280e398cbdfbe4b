"""The cached encoder prefix gives exactly the loss (and gradients) of the full model."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from flexispeech import FlexiLoraConfig, inject, use_ranks
from flexispeech.errors import ConfigError
from flexispeech.models.family import Example, get_family, load_model
from flexispeech.models.random_init import randomize_adapters
from flexispeech.models.whisper_prefix import encode_prefix, frozen_prefix_pattern, loss_from_prefix


def test_pattern_skips_frozen_encoder_layers() -> None:
    pattern = frozen_prefix_pattern(("q_proj", "fc1"), 2)
    match = lambda name: re.fullmatch(pattern, name) is not None  # noqa: E731
    assert not match("model.encoder.layers.0.self_attn.q_proj") and not match("model.encoder.layers.1.fc1")
    assert match("model.encoder.layers.2.self_attn.q_proj") and match("model.decoder.layers.0.fc1")
    assert match("model.decoder.layers.1.encoder_attn.q_proj") and not match("model.decoder.layers.1.fc2")


@pytest.mark.parametrize("n_frozen", [1, 2])
def test_cached_prefix_loss_equals_full_loss(n_frozen: int) -> None:
    family = get_family("whisper")
    model, processor = load_model(family, "random:tiny", audio_ctx=50)
    inject(
        model,
        FlexiLoraConfig(
            ranks=(0, 4, 8), target_modules=frozen_prefix_pattern(family.default_targets, n_frozen)
        ),
    )
    randomize_adapters(model)
    rng = np.random.default_rng(0)
    examples = [
        Example(str(i), "the quick brown fox", audio=rng.normal(0, 0.1, 12000).astype(np.float32))
        for i in range(3)
    ]
    batch = family.collate(processor, examples)
    ranks = torch.tensor([0, 4, 8])
    with use_ranks(model, ranks):
        full = family.loss(model, batch)
        full.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()
    prefix = encode_prefix(model, batch["input_features"], n_frozen)
    with use_ranks(model, ranks):
        cached = loss_from_prefix(model, prefix, batch["labels"], n_frozen)
        cached.backward()
    torch.testing.assert_close(cached, full, rtol=1e-5, atol=1e-6)
    for name, p in model.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(p.grad, grads[name], rtol=1e-4, atol=1e-6)


def test_family_training_inputs_from_the_cached_prefix_give_the_full_loss(tmp_path) -> None:
    import soundfile as sf

    from flexispeech.data.corpus import write_corpus
    from flexispeech.data.speech import CorpusSplit
    from flexispeech.models.family import CollatedInputs, train_inputs
    from flexispeech.models.whisper_prefix import PrefixInputs

    rng = np.random.default_rng(1)
    (tmp_path / "audio").mkdir()
    rows = []
    for i in range(3):
        sf.write(
            tmp_path / "audio" / f"u{i}.wav", rng.normal(0, 0.1, 8000 + 2000 * i).astype(np.float32), 16000
        )
        rows.append(
            {
                "id": f"u{i}",
                "audio": f"audio/u{i}.wav",
                "text": ["the fox", "a quick brown dog", "call stella"][i],
                "duration": 0.5 + 0.125 * i,
                "speaker": "s",
                "split": "train",
            }
        )
    split = CorpusSplit(write_corpus(rows, tmp_path, name="p"), "train")
    family = get_family("whisper")
    model, processor = load_model(family, "random:tiny", audio_ctx=50)
    inject(
        model,
        FlexiLoraConfig(ranks=(0, 4, 8), target_modules=frozen_prefix_pattern(family.default_targets, 2)),
    )
    randomize_adapters(model)
    full, cached = (
        train_inputs(family, model, processor, split),
        train_inputs(family, model, processor, split, 2, "key"),
    )
    assert isinstance(full, CollatedInputs) and isinstance(cached, PrefixInputs)
    assert list(
        (tmp_path / "cache" / "encoder").glob("*.safetensors")
    )  # computed once, kept for the next run
    rows_in_order, ranks = [2, 0, 1], torch.tensor([8, 4, 0])
    with use_ranks(model, ranks), torch.no_grad():
        expected = full.loss(model, full.collate(rows_in_order))
        got = cached.loss(model, cached.collate(rows_in_order))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ConfigError, match="Whisper only"):
        train_inputs(get_family("wav2vec2"), model, processor, split, 2)
