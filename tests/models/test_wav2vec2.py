"""The Wav2Vec2 CTC family on its tiny random model."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from flexispeech import FlexiLoraConfig, inject, use_ranks
from flexispeech.audio import load_audio
from flexispeech.errors import ConfigError
from flexispeech.lora import adapter_parameters
from flexispeech.models.family import Example, get_family
from flexispeech.models.random_init import randomize_adapters
from flexispeech.models.wav2vec2 import FAMILY, normalize_text


@pytest.fixture(scope="module")
def base():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls: a busy multi-core pool only adds spin-waits
    yield FAMILY.load("random:tiny")
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def examples(assets_dir: Path, transcripts: dict[str, str]) -> list[Example]:
    return [
        Example(id=n, text=transcripts[n], audio=load_audio(assets_dir / n))
        for n in ("fox.wav", "stella.wav")
    ]


def test_registered_and_targets_exist(base) -> None:
    model, _ = base
    assert get_family("wav2vec2") is FAMILY
    names = {name.rpartition(".")[2] for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    assert set(FAMILY.default_targets) <= names


def test_collate_character_labels(base, examples: list[Example]) -> None:
    _, processor = base
    batch = FAMILY.collate(processor, examples)
    assert batch["input_values"].shape == batch["attention_mask"].shape
    assert batch["attention_mask"].sum(1).tolist() == [len(e.audio) for e in examples]
    tok = processor.tokenizer
    fox = batch["labels"][0]
    assert tok.decode(fox[fox != -100].tolist()) == "THE QUICK BROWN FOX JUMPS OVER THE LAZY DOG"
    assert (batch["labels"][1] != -100).all()  # the longer text fills its row
    assert fox[fox != -100].tolist()[:4] == [tok.convert_tokens_to_ids(c) for c in ["T", "H", "E", "|"]]
    assert normalize_text("Doctor's 9:30, ok!", tok.get_vocab()) == "DOCTOR'S OK"


def test_collate_takes_labels_made_beforehand(base, examples: list[Example], monkeypatch) -> None:
    """``labels`` are collate's own labels, and given labels are kept without tokenising
    (the training loader's workers make them); labels of another batch size are refused."""
    _, processor = base
    want = FAMILY.collate(processor, examples)
    labels = FAMILY.labels(processor, [ex.text for ex in examples])
    assert torch.equal(labels, want["labels"])

    def no_tokenising(*args, **kwargs):
        raise AssertionError("collate tokenised the texts although it was given their labels")

    monkeypatch.setattr(FAMILY, "labels", no_tokenising)
    got = FAMILY.collate(processor, examples, labels=labels)
    assert set(got) == set(want) and torch.equal(got["labels"], want["labels"])
    with pytest.raises(ValueError, match=r"labels: expected \[2, L\]"):
        FAMILY.collate(processor, examples, labels=labels[:1])


def test_per_example_ranks_in_loss_and_decoding(base, examples: list[Example]) -> None:
    model, processor = copy.deepcopy(base)
    inject(model, FlexiLoraConfig(ranks=(0, 2, 8), target_modules=FAMILY.default_targets))
    randomize_adapters(model, b_scale=1.0)
    batch = FAMILY.collate(processor, examples, train=False)
    with use_ranks(model, [8, 0]), torch.no_grad():
        together = FAMILY.generate(model, processor, batch)
        logits = model(**FAMILY._inputs(model, batch)).logits
    for i, r in enumerate([8, 0]):
        one = FAMILY.collate(processor, examples[i : i + 1], train=False)
        with use_ranks(model, [r]), torch.no_grad():
            assert FAMILY.generate(model, processor, one) == [together[i]]
            alone = model(**FAMILY._inputs(model, one)).logits[0]
        assert torch.allclose(logits[i, : alone.shape[0]], alone, atol=1e-4)
    with use_ranks(model, [0, 0]), torch.no_grad():
        assert FAMILY.generate(model, processor, batch)[0] != together[0]
    with pytest.raises(ConfigError, match="beam"):
        FAMILY.generate(model, processor, batch, num_beams=2)


def test_label_logprob_is_the_ctc_likelihood_of_each_candidate_at_each_rows_rank(
    base, examples: list[Example]
) -> None:
    """Each candidate's score is minus the model's own CTC loss of it (one row at a time,
    the loss's ``mean`` reduction undone), at per-row ranks, for two candidates scored in
    one call. Fails if a row's frames, rank or target length is mixed up."""
    model, processor = copy.deepcopy(base)
    inject(model, FlexiLoraConfig(ranks=(0, 2, 8), target_modules=FAMILY.default_targets))
    randomize_adapters(model, b_scale=1.0)
    assert model.config.ctc_loss_reduction == "mean"
    texts = [[ex.text for ex in examples], ["a fox", "call stella"]]
    batch = FAMILY.collate(processor, examples, train=False)
    labels = [FAMILY.labels(processor, t) for t in texts]
    with use_ranks(model, [8, 0]):
        got = FAMILY.label_logprob(model, batch, labels)
    assert got.shape == (2, 2) and torch.isfinite(got).all()
    for i, r in enumerate([8, 0]):
        one = FAMILY.collate(processor, examples[i : i + 1], train=False)
        for c in range(2):
            lab = FAMILY.labels(processor, [texts[c][i]])
            with use_ranks(model, [r]), torch.no_grad():
                loss = model(**FAMILY._inputs(model, one), labels=lab).loss
            want = -float(loss) * int((lab != -100).sum())
            assert abs(float(got[c, i]) - want) <= 1e-3 * max(1.0, abs(want))


def test_adapter_training_lowers_ctc_loss(base, examples: list[Example]) -> None:
    model, processor = copy.deepcopy(base)
    inject(model, FlexiLoraConfig(ranks=(2, 8), target_modules=FAMILY.default_targets))
    batch = FAMILY.collate(processor, examples)
    opt = torch.optim.Adam(adapter_parameters(model), lr=1e-2)
    model.train()
    losses = []
    for _ in range(6):
        with use_ranks(model, [2, 8]):
            loss = FAMILY.loss(model, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.95 * losses[0], losses
    assert all(p.grad is None for n, p in model.named_parameters() if "lora_" not in n)
