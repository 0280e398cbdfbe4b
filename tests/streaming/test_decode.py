"""Batched greedy decoding: every row, with its own prompt, token cap and rank, gets token
for token what transformers' ``generate`` gives it alone (tiny random Whisper)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from flexispeech.audio import SAMPLE_RATE, load_audio
from flexispeech.lora import use_ranks
from flexispeech.models.whisper import FAMILY, set_audio_ctx
from flexispeech.streaming.decode import complete_segments, greedy_decode, prompt_tokens

PROMPTS = ["", "the quick brown fox jumps over the lazy dog", "please"]
CAPS = [40, 12, 30]


@pytest.fixture(scope="module")
def model_and_inputs(assets_dir: Path):
    model, processor = FAMILY.load("random:tiny")
    set_audio_ctx(model, 250, processor)
    audio = [load_audio(assets_dir / n) for n in ("fox.wav", "stella.wav", "meeting.wav")]
    features = processor.feature_extractor(
        audio, sampling_rate=SAMPLE_RATE, return_tensors="pt"
    ).input_features
    return model, processor, features


def alone(model, processor, features, row: int) -> list[int]:
    kwargs = {"return_timestamps": True, "max_new_tokens": CAPS[row]}
    if PROMPTS[row]:
        kwargs["prompt_ids"] = processor.tokenizer.get_prompt_ids(PROMPTS[row], return_tensors="pt")
    out = model.generate(features[row : row + 1], **kwargs)
    return (out["sequences"] if isinstance(out, dict) else out)[0].tolist()


def test_rows_with_their_own_prompts_decode_as_they_would_alone(model_and_inputs) -> None:
    model, processor, features = model_and_inputs
    prompts = [prompt_tokens(processor.tokenizer, p) for p in PROMPTS]
    assert prompts[0] == [] and len({len(p) for p in prompts}) == 3  # three prefix lengths: padding at work
    got = greedy_decode(model, features, prompts, CAPS)
    expected = [alone(model, processor, features, row) for row in range(3)]
    assert got == expected
    assert any(
        t >= model.generation_config.no_timestamps_token_id + 1 for t in got[0]
    )  # timestamps were decoded


def test_rows_decode_at_their_own_ranks(model_and_inputs) -> None:
    from flexispeech import FlexiLoraConfig, inject
    from flexispeech.lora import remove
    from flexispeech.models.random_init import randomize_adapters

    model, processor, features = model_and_inputs
    inject(
        model, FlexiLoraConfig(ranks=(2, 8), target_modules=FAMILY.default_targets)
    )  # a row per rank, one repeated
    randomize_adapters(model, b_scale=1.0)
    try:
        ranks = torch.tensor([8, 2, 8])
        prompts = [prompt_tokens(processor.tokenizer, p) for p in PROMPTS]
        with use_ranks(model, ranks):
            got = greedy_decode(model, features, prompts, CAPS)
        expected = []
        for row, rank in enumerate(ranks.tolist()):
            with use_ranks(model, torch.tensor([rank])):
                expected.append(alone(model, processor, features, row))
        assert got == expected
        with use_ranks(model, torch.tensor([2, 2, 2])):
            assert (
                greedy_decode(model, features, prompts, CAPS)[0] != got[0]
            )  # the rank changed row 0's tokens
    finally:
        remove(model)


def test_complete_segments_keeps_what_generate_keeps() -> None:
    begin, eos = 100, 1
    assert complete_segments([5, 6, eos], begin, eos) == [5, 6]  # no timestamps: whole, without eos
    assert complete_segments([100, 5, 120, 120, 7, 8], begin, eos) == [
        100,
        5,
        120,
        120,
    ]  # cut after the last pair
    assert complete_segments([100, 5, 120, 120, 7, 130], begin, eos) == [
        100,
        5,
        120,
        120,
        7,
        130,
    ]  # single ending


def test_a_row_cut_for_looping_stops_there_and_the_others_go_on(model_and_inputs, monkeypatch) -> None:
    """``stop_loops``: a row whose tokens loop_start cuts keeps the tokens before the cut and
    generates nothing more, while the other rows of the batch decode on unchanged."""
    import flexispeech.streaming.decode as decode

    model, processor, features = model_and_inputs
    monkeypatch.setattr(decode, "complete_segments", lambda generated, begin, eos: list(generated))
    prompts = [prompt_tokens(processor.tokenizer, p) for p in PROMPTS]
    caps = [40, 40, 40]
    full = greedy_decode(model, features, prompts, caps)  # every generated token, no cut

    def cut_at(tokens: list[int]) -> int:  # a fake loop: each row "loops" at its own length
        return 5 + tokens[0] % 4

    def fake_loop_start(generated: list[int], begin: int) -> int | None:
        return len(generated) - 2 if len(generated) == cut_at(generated) else None

    monkeypatch.setattr(decode, "loop_start", fake_loop_start)
    got = greedy_decode(model, features, prompts, caps, stop_loops=True)
    expected = [row[: cut_at(row) - 2] if len(row) >= cut_at(row) else row for row in full]
    assert got == expected
    assert len({cut_at(row) for row in full}) > 1  # rows cut at different steps, others going on


@pytest.mark.parametrize("first", [True, False])
def test_suppression_masks_what_transformers_processors_mask(model_and_inputs, first: bool) -> None:
    """The suppression masks, built once per decoding, give the scores transformers'
    ``SuppressTokensAtBegin`` and ``SuppressTokens`` processors give, at the first
    generated token (both lists) and after it (``suppress_tokens`` only)."""
    from transformers.generation.logits_process import (
        SuppressTokensAtBeginLogitsProcessor,
        SuppressTokensLogitsProcessor,
    )

    from flexispeech.streaming.decode import Suppression

    model = model_and_inputs[0]
    gc = model.generation_config
    vocab, width = int(model.config.vocab_size), 5
    scores = torch.randn(3, vocab, generator=torch.Generator().manual_seed(0))
    sequences = torch.zeros((3, width if first else width + 2), dtype=torch.long)
    expected = SuppressTokensAtBeginLogitsProcessor(gc.begin_suppress_tokens, begin_index=width)(
        sequences, scores
    )
    expected = SuppressTokensLogitsProcessor(gc.suppress_tokens)(sequences, expected)
    got = Suppression(model, vocab, torch.device("cpu"))(scores, first=[first] * 3)
    assert torch.equal(got, expected)
    assert bool(torch.isinf(got[:, gc.begin_suppress_tokens]).all()) == first  # the test sees both cases


def test_only_the_last_position_is_projected_onto_the_vocabulary(model_and_inputs) -> None:
    """The first step feeds every row's whole prefix (prompt included); only its last
    position's logits are read, so only that one is projected (one position per row)."""
    model, processor, features = model_and_inputs
    prompts = [prompt_tokens(processor.tokenizer, p) for p in PROMPTS]
    shapes: list[tuple[int, ...]] = []
    hook = model.proj_out.register_forward_hook(
        lambda _m, inputs, _out: shapes.append(tuple(inputs[0].shape))
    )
    try:
        greedy_decode(model, features, prompts, [3, 3, 3])
    finally:
        hook.remove()
    assert shapes and all(shape == (3, model.config.d_model) for shape in shapes)


def _forwards(model) -> tuple[list[int], object]:
    """Counts the decoder's forward passes (one per decoding step)."""
    calls: list[int] = []
    hook = model.model.decoder.register_forward_hook(lambda *_: calls.append(1))
    return calls, hook


@pytest.mark.parametrize("kind", ["exact", "wrong_token", "too_long", "empty"])
def test_drafts_change_no_token(model_and_inputs, kind: str) -> None:
    """A draft only saves steps: the tokens are those of decoding without it, whether the
    draft is right, wrong after three tokens, longer than the cap, or empty. A right draft
    is taken in one pass (one step, and a few more for a row whose last segment was cut)."""
    model, processor, features = model_and_inputs
    prompts = [prompt_tokens(processor.tokenizer, p) for p in PROMPTS]
    calls, hook = _forwards(model)
    try:
        plain = greedy_decode(model, features, prompts, CAPS)
        plain_steps = len(calls)
        drafts = {
            "exact": plain,
            "wrong_token": [seq[:3] + [seq[3] ^ 1] + seq[4:] for seq in plain],
            "too_long": [seq + seq for seq in plain],
            "empty": [[] for _ in plain],
        }[kind]
        calls.clear()
        got = greedy_decode(model, features, prompts, CAPS, drafts=drafts)
    finally:
        hook.remove()
    assert got == plain
    assert all(len(seq) > 4 for seq in plain)  # the wrong token is inside every row's text
    if kind == "exact":
        assert len(calls) < plain_steps / 2
    if kind == "empty":
        assert len(calls) == plain_steps


def test_lookup_proposal_follows_the_latest_earlier_occurrence() -> None:
    """Prompt lookup: what followed the last ``n`` tokens the latest time they occurred."""
    from flexispeech.streaming.decode import lookup_proposal

    history = [1, 2, 3, 4, 5, 9, 1, 2, 3, 7, 8, 1, 2, 3]
    assert lookup_proposal(history, n=3) == [7, 8, 1, 2, 3]  # the latest of two earlier occurrences
    assert lookup_proposal(history, n=3, most=2) == [7, 8]
    assert lookup_proposal([1, 2, 3, 4], n=3) == []  # never before
    assert lookup_proposal([5, 5, 5, 5], n=3) == [5]  # a repeat proposes itself


def _raw_rows(model, processor, features, monkeypatch) -> tuple[list[list[int]], list[list[int]]]:
    """Every row's prefix and all the tokens it generates (no segment cut), decoded plainly."""
    import flexispeech.streaming.decode as decode

    prompts = [prompt_tokens(processor.tokenizer, p) for p in PROMPTS]
    monkeypatch.setattr(decode, "complete_segments", lambda generated, begin, eos: list(generated))
    monkeypatch.setattr(decode, "lookup_proposal", lambda history: [])
    raw = greedy_decode(model, features, prompts, CAPS)
    prefixes = [p + decode.init_tokens(model) for p in prompts]
    return prefixes, raw


@pytest.mark.parametrize("kind", ["right", "wrong_token"])
def test_proposals_after_the_first_step_change_no_token(model_and_inputs, monkeypatch, kind: str) -> None:
    """A step fed a proposal (``lookup_proposal``) takes the proposed tokens the greedy choice
    agrees with and no others: right proposals give the tokens of plain decoding in a few
    passes, a wrong token in every proposal still gives exactly those tokens."""
    import flexispeech.streaming.decode as decode

    model, processor, features = model_and_inputs
    prefixes, raw = _raw_rows(model, processor, features, monkeypatch)

    def oracle(history: list[int]) -> list[int]:  # the rest of the row's own plain decoding
        for prefix, tokens in zip(prefixes, raw):
            done = history[len(prefix) :]
            if history[: len(prefix)] == prefix and tokens[: len(done)] == done:
                ahead = tokens[len(done) : len(done) + 8]
                return ahead if kind == "right" else ahead[:2] + [t ^ 1 for t in ahead[2:3]] + ahead[3:]
        raise AssertionError("a history that is no row's plain decoding")

    monkeypatch.setattr(decode, "lookup_proposal", oracle)
    prompts = [prompt_tokens(processor.tokenizer, p) for p in PROMPTS]
    calls, hook = _forwards(model)
    try:
        got = greedy_decode(model, features, prompts, CAPS)
    finally:
        hook.remove()
    assert got == raw
    longest = max(len(tokens) for tokens in raw)
    if kind == "right":  # 8 tokens a pass after the first step
        assert len(calls) <= 2 + longest // 8
    else:  # two tokens and the greedy choice a pass at most
        assert len(calls) >= longest // 3
