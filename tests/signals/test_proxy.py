"""The first-pass confidence proxy on a tiny random Whisper."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from flexispeech import FlexiLoraConfig, inject, use_ranks
from flexispeech.audio import load_audio
from flexispeech.models.family import Example
from flexispeech.models.random_init import randomize_adapters
from flexispeech.models.whisper import FAMILY, set_audio_ctx
from flexispeech.signals.proxy import first_pass_confidence

MAX_NEW = 6


@pytest.fixture(scope="module")
def setup(assets_dir: Path):
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls: a busy multi-core pool only adds spin-waits
    model, processor = FAMILY.load("random:tiny")
    set_audio_ctx(model, 150, processor)
    examples = [Example(id=n, text="", audio=load_audio(assets_dir / n)) for n in ("fox.wav", "meeting.wav")]
    yield model, processor, FAMILY.collate(processor, examples, train=False)
    torch.set_num_threads(n)


def test_finite_and_batch_agrees_with_single(setup) -> None:
    model, processor, batch = setup
    together = first_pass_confidence(model, processor, batch, max_new_tokens=MAX_NEW)
    assert set(together) == {"proxy", "proxy_entropy"}
    for key, values in together.items():
        assert values.shape == (2,) and torch.isfinite(values).all(), key
        assert (values > 0).all(), key  # -log p and entropy of a random model are positive
    for i in range(2):
        one = first_pass_confidence(model, processor, {k: v[i : i + 1] for k, v in batch.items()}, MAX_NEW)
        for key in together:
            assert one[key][0].item() == pytest.approx(together[key][i].item(), rel=1e-4, abs=1e-5)


def test_scores_the_greedy_tokens_by_hand(setup) -> None:
    model, processor, batch = setup
    one = {k: v[:1] for k, v in batch.items()}
    got = first_pass_confidence(model, processor, one, max_new_tokens=MAX_NEW)
    seq = FAMILY.generate_ids(model, one, max_new_tokens=MAX_NEW)[0]
    n_prefix = len(processor.tokenizer.prefix_tokens)
    eot = processor.tokenizer.convert_tokens_to_ids("<|endoftext|>")
    with torch.no_grad():
        logits = model(input_features=one["input_features"], decoder_input_ids=seq[None, :-1]).logits[0]
    logp = torch.log_softmax(logits, -1)
    end = len(seq)
    if (seq[n_prefix:] == eot).any():
        end = n_prefix + int((seq[n_prefix:] == eot).nonzero()[0]) + 1
    picked = [logp[t - 1, seq[t]].item() for t in range(n_prefix, end)]
    assert got["proxy"][0].item() == pytest.approx(-sum(picked) / len(picked), rel=1e-4)
    entropy = [-(logp[t - 1].exp() * logp[t - 1]).sum().item() for t in range(n_prefix, end)]
    assert got["proxy_entropy"][0].item() == pytest.approx(sum(entropy) / len(entropy), rel=1e-4)


def test_adapter_is_switched_off(setup) -> None:
    model, processor, batch = setup
    base = first_pass_confidence(model, processor, batch, max_new_tokens=MAX_NEW)
    import copy

    adapted = copy.deepcopy(model)
    inject(adapted, FlexiLoraConfig(ranks=(4, 8), target_modules=FAMILY.default_targets))  # no rank 0
    randomize_adapters(adapted)
    with use_ranks(adapted, [8, 4]):
        off = first_pass_confidence(adapted, processor, batch, max_new_tokens=MAX_NEW)
        on = FAMILY.loss(adapted, {**batch, "labels": torch.tensor([[processor.tokenizer.eos_token_id]] * 2)})
    assert torch.allclose(off["proxy"], base["proxy"], atol=1e-5)
    with torch.no_grad():
        ref = FAMILY.loss(model, {**batch, "labels": torch.tensor([[processor.tokenizer.eos_token_id]] * 2)})
    assert abs(on.item() - ref.item()) > 1e-4  # the adapter does change the model when on


def test_first_pass_decodes_with_the_evaluation_budget(setup, monkeypatch) -> None:
    """Without a cap the first pass gets ``decode_budget``, as evaluation: at a shortened
    window the window's budget, at the full window Whisper's 15 tokens per second of the
    batch's longest clip (``num_frames``), not the window's 440 (on a GPU every batch of the
    study ran to that cap before)."""
    import copy

    import flexispeech.models.whisper_greedy as greedy
    from flexispeech.models.whisper import token_budget

    model, processor, batch = setup
    budgets = []
    original = greedy.greedy_decode
    monkeypatch.setattr(
        greedy, "greedy_decode", lambda m, f, n, **k: budgets.append(n) or original(m, f, n, **k)
    )
    first_pass_confidence(model, processor, batch)
    assert budgets == [45]  # the 3-s window: 15 tokens per second of it
    full = copy.deepcopy(model)
    set_audio_ctx(full, 1500)
    first_pass_confidence(full, processor, batch)
    first_pass_confidence(full, processor, {**batch, "num_frames": torch.tensor([40, 60])})
    assert budgets[1:] == [token_budget(full, batch["num_frames"].tolist()), 9]  # 0.6 s x 15 tokens/s
    assert budgets[1] < token_budget(full, [3000])
