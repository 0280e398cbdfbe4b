"""Greedy decoding with a static cache (whisper_greedy) against transformers' generate."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from flexispeech import FlexiLoraConfig, inject, use_ranks
from flexispeech.audio import load_audio
from flexispeech.models.family import Example
from flexispeech.models.random_init import randomize_adapters
from flexispeech.models.whisper import FAMILY, set_audio_ctx
from flexispeech.models.whisper_greedy import adapter_layers, greedy_decode, prefix_ids

NAMES = ("fox.wav", "stella.wav", "meeting.wav")


@pytest.fixture(scope="module")
def setup(assets_dir: Path):
    """Random tiny Whisper with random adapters (ranks 0, 2, 4, 8) on a 3-s window."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls: a busy multi-core pool only adds spin-waits
    model, processor = FAMILY.load("random:tiny")
    inject(model, FlexiLoraConfig(ranks=(0, 2, 4, 8), target_modules=FAMILY.default_targets))
    randomize_adapters(model)
    set_audio_ctx(model, 150, processor)
    examples = [Example(id=n, text="", audio=load_audio(assets_dir / n)) for n in NAMES]
    yield model, processor, FAMILY.collate(processor, examples, train=False)["input_features"]
    torch.set_num_threads(n)


def reference(model, features: torch.Tensor, budget: int) -> list[torch.Tensor]:
    """transformers' greedy ``generate``, each row cut after its first end-of-text."""
    seqs = model.generate(
        features, return_timestamps=False, force_unique_generate_call=True, max_new_tokens=budget
    )
    eos, n_prefix = model.generation_config.eos_token_id, len(prefix_ids(model))
    out = []
    for seq in seqs:
        hits = (seq[n_prefix:] == eos).nonzero()
        out.append(seq[: n_prefix + int(hits[0]) + 1] if len(hits) else seq)
    return out


def assert_same(got: list[torch.Tensor], want: list[torch.Tensor]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.tolist() == w.tolist()


@pytest.mark.parametrize("ranks", [[0, 4, 8], [8, 8, 8], [2]])
def test_same_tokens_as_generate_at_per_row_ranks(setup, ranks: list[int]) -> None:
    model, _, features = setup
    with use_ranks(model, ranks):
        want = reference(model, features, budget=12)
        got = greedy_decode(model, features, max_new_tokens=12, graphs=False)
    assert_same(got.sequences, want)
    assert [len(s) for s in got.sequences] == [len(prefix_ids(model)) + 12] * 3  # a random model never stops


def test_rows_stop_at_their_own_end_of_text(setup) -> None:
    """Rows finish at different steps: make a token row 0 emits early the end-of-text."""
    model, _, features = setup
    model = copy.deepcopy(model)
    with use_ranks(model, [0, 4, 8]):
        first = greedy_decode(model, features, max_new_tokens=12, graphs=False).sequences
        n_prefix = len(prefix_ids(model))
        model.generation_config.eos_token_id = int(first[0][n_prefix + 2])  # row 0's third token
        model.generation_config.pad_token_id = model.generation_config.eos_token_id
        want = reference(model, features, budget=12)
        got = greedy_decode(model, features, max_new_tokens=12, graphs=False)
    assert_same(got.sequences, want)
    assert len(got.sequences[0]) <= n_prefix + 3 < max(len(s) for s in got.sequences)
    assert got.n_tokens.tolist() == [len(s) - n_prefix for s in got.sequences]


def test_suppressed_tokens_are_never_chosen(setup) -> None:
    """Suppress the tokens the model picks: both decoders must pick others, the same ones."""
    model, _, features = setup
    model = copy.deepcopy(model)
    plain = greedy_decode(model, features, max_new_tokens=6, graphs=False).sequences
    n_prefix = len(prefix_ids(model))
    picked = sorted({int(t) for s in plain for t in s[n_prefix:]})
    model.generation_config.suppress_tokens = picked
    got = greedy_decode(model, features, max_new_tokens=6, graphs=False).sequences
    assert_same(got, reference(model, features, budget=6))
    assert not {int(t) for s in got for t in s[n_prefix:]} & set(picked)


def test_begin_suppressed_tokens_only_at_the_first_token(setup) -> None:
    model, _, features = setup
    model = copy.deepcopy(model)
    plain = greedy_decode(model, features, max_new_tokens=6, graphs=False).sequences
    n_prefix = len(prefix_ids(model))
    firsts = sorted({int(s[n_prefix]) for s in plain})
    model.generation_config.suppress_tokens = []
    model.generation_config.begin_suppress_tokens = firsts
    got = greedy_decode(model, features, max_new_tokens=6, graphs=False).sequences
    assert_same(got, reference(model, features, budget=6))
    assert not {int(s[n_prefix]) for s in got} & set(firsts)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_graph_replay_gives_the_eager_tokens(setup) -> None:
    """The captured step is replayed for a second batch at other ranks: the tokens and the
    proxy sums are those of eager decoding."""
    model, _, features = setup
    model = copy.deepcopy(model).cuda()
    features = features.cuda()
    for ranks in ([0, 4, 8], [8, 2, 0], [4, 4, 4]):
        with use_ranks(model, ranks):
            eager = greedy_decode(model, features, max_new_tokens=10, graphs=False)
            graphed = greedy_decode(model, features, max_new_tokens=10, graphs=True)
        assert_same(graphed.sequences, eager.sequences)
        torch.testing.assert_close(graphed.nll_sum, eager.nll_sum, rtol=1e-4, atol=1e-4)
    assert any(s.graph is not None for s in model.__dict__["_flexispeech_greedy"].values())


def test_a_model_without_adapter_has_no_layers_to_switch(setup) -> None:
    """The capture puts adapted layers on their graph-safe path and back; the base model of
    the signals pass has none (the GPU study's signals stage once failed here)."""
    model, _, _ = setup
    plain, _ = FAMILY.load("random:tiny")
    assert adapter_layers(plain) == []
    # 2 encoder layers (q, k, v, out, fc1, fc2) and 2 decoder layers (self and cross attention)
    assert len(adapter_layers(model)) == 2 * 6 + 2 * 10


def test_a_failed_capture_falls_back_to_eager_decoding_and_says_so(setup, monkeypatch, caplog) -> None:
    """Any error while capturing the graph costs speed only: the batch is decoded eagerly
    (the same tokens) with a warning naming the error."""
    import logging

    import flexispeech.models.whisper_greedy as greedy

    model, _, features = setup
    with use_ranks(model, [0, 4, 8]):
        want = greedy_decode(model, features, max_new_tokens=6, graphs=False).sequences

    def broken(model, state):
        raise ValueError("model has no adapter")

    monkeypatch.setattr(greedy, "_graphs_usable", lambda device, graphs: True)
    monkeypatch.setattr(greedy, "_capture", broken)
    with (
        caplog.at_level(logging.WARNING, logger="flexispeech.models.whisper_greedy"),
        use_ranks(model, [0, 4, 8]),
    ):
        monkeypatch.setattr(greedy, "_graphs_usable", lambda device, graphs: graphs is not False)
        got = greedy_decode(model, features, max_new_tokens=6).sequences
    assert_same(got, want)
    assert "CUDA graph capture failed (ValueError: model has no adapter); decoding eagerly" in caplog.text
    assert model.__dict__.get("_flexispeech_greedy") == {}  # no half-captured state kept


def test_label_logprob_scores_the_greedy_tokens_as_decoding_did(setup) -> None:
    """``label_logprob`` of each row's greedy sequence (prefix after <|startoftranscript|>
    included), less that of its prefix alone, is minus the decoding's summed NLL, at per-row
    ranks; a clip longer than the window gets NaN. Fails if the teacher-forced pass shifts
    the labels wrong, reads another row's rank or drops the end-of-text token."""
    model, _, features = setup
    ranks = [0, 8, 2]
    with use_ranks(model, ranks):
        out = greedy_decode(model, features, max_new_tokens=12, graphs=False)
        n_prefix = len(prefix_ids(model))
        labels = torch.full((3, max(len(s) for s in out.sequences) - 1), -100)
        for i, seq in enumerate(out.sequences):
            labels[i, : len(seq) - 1] = seq[1:]
        prefix = labels[:, : n_prefix - 1].clone()
        batch = {"input_features": features}
        whole, only_prefix = FAMILY.label_logprob(model, batch, [labels, prefix])
    torch.testing.assert_close(whole - only_prefix, -out.nll_sum, atol=1e-3, rtol=1e-4)
    assert (whole - only_prefix < 0).all()  # a real log-probability over at least one token
    long = {"input_features": features, "num_frames": torch.tensor([10, 10_000, 10])}
    with use_ranks(model, ranks):
        scores = FAMILY.label_logprob(model, long, [labels])
    assert scores[0, 1].isnan() and not scores[0, [0, 2]].isnan().any()
