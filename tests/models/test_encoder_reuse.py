"""One encoder pass per clip and rank inside ``reuse_encoder`` (models.encoder_reuse)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from flexispeech import FlexiLoraConfig, inject, use_ranks
from flexispeech.audio import load_audio
from flexispeech.models.encoder_reuse import reuse_encoder
from flexispeech.models.example import Example
from flexispeech.models.random_init import randomize_adapters
from flexispeech.models.whisper import FAMILY, set_audio_ctx
from flexispeech.models.whisper_greedy import greedy_decode

NAMES = ("fox.wav", "stella.wav", "meeting.wav")


def adapted(targets: tuple[str, ...] | str):
    """Random tiny Whisper with random adapters (ranks 0, 2, 4, 8) on ``targets``, 3-s window."""
    model, processor = FAMILY.load("random:tiny")
    inject(model, FlexiLoraConfig(ranks=(0, 2, 4, 8), target_modules=targets))
    randomize_adapters(model)
    set_audio_ctx(model, 150, processor)
    return model.eval(), processor


@pytest.fixture(scope="module")
def setup(assets_dir: Path):
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls: a busy multi-core pool only adds spin-waits
    model, processor = adapted(FAMILY.default_targets)
    examples = [Example(id=n, text="", audio=load_audio(assets_dir / n)) for n in NAMES]
    yield model, processor, FAMILY.collate(processor, examples, train=False)["input_features"]
    torch.set_num_threads(n)


def encode(model, features: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.model.encoder(features).last_hidden_state


def test_kept_outputs_are_the_encoders_own_at_each_rows_rank(setup) -> None:
    """Rows come back in another order, in sub-batches and at other ranks: every output is
    what the encoder gives without the block, and only new (clip, rank) pairs run. Fails if
    the key leaves out the rank (an adapted encoder differs by rank) or mixes up rows."""
    model, _, features = setup
    with use_ranks(model, [0, 4, 8]):
        want_first = encode(model, features)
    with use_ranks(model, [8, 4, 0]):
        want_second = encode(model, features)
    with reuse_encoder(model) as cache:
        with use_ranks(model, [0, 4, 8]):
            first = encode(model, features)
        assert (cache.rows_encoded, cache.rows_reused) == (3, 0)
        with use_ranks(model, [8, 4, 0]):  # row 1 (rank 4) kept; rows 0 and 2 at new ranks
            second = encode(model, features)
        assert (cache.rows_encoded, cache.rows_reused) == (5, 1)
        with use_ranks(model, [4, 8, 0]):  # rows 1, 2, 0 at ranks they ran at before
            third = encode(model, features[[1, 2, 0]])
        assert (cache.rows_encoded, cache.rows_reused) == (5, 4)
    torch.testing.assert_close(first, want_first)
    torch.testing.assert_close(second, want_second)
    torch.testing.assert_close(third, want_first[[1, 2, 0]])
    assert not torch.allclose(want_first[0], want_second[0])  # the ranks do change the output


def test_an_encoder_without_adapters_runs_once_per_clip_at_any_rank() -> None:
    """Decoder-only adapters: the rank does not reach the encoder, so a second decoding at
    another rank runs no encoder pass, and its tokens are those decoded without the block."""
    model, _ = adapted(r".*decoder\.layers\.\d+\.(self_attn|encoder_attn)\.(q_proj|v_proj)")
    features = torch.randn(2, 80, 300)
    with use_ranks(model, [8, 2]):
        want = greedy_decode(model, features, max_new_tokens=6, graphs=False).sequences
    with reuse_encoder(model) as cache:
        with use_ranks(model, [0, 0]):
            greedy_decode(model, features, max_new_tokens=6, graphs=False)
        with use_ranks(model, [8, 2]):
            got = greedy_decode(model, features, max_new_tokens=6, graphs=False).sequences
    assert (cache.rows_encoded, cache.rows_reused) == (2, 2)
    assert [g.tolist() for g in got] == [w.tolist() for w in want]


def test_other_calls_pass_through_and_the_block_leaves_nothing_behind(setup) -> None:
    """Hidden states asked for, or the encoder in training mode: the encoder runs as is.
    After the block the encoder's own forward is back; a nested block is refused."""
    model, _, features = setup
    model = copy.deepcopy(model)
    with reuse_encoder(model) as cache:
        with torch.no_grad():
            out = model.model.encoder(features, output_hidden_states=True)
        assert out.hidden_states is not None
        model.train()
        with torch.no_grad():
            model.model.encoder(features)
        model.eval()
        assert cache.calls == 0
        with pytest.raises(RuntimeError, match="already wrapped"):
            with reuse_encoder(model):
                pass
    assert "forward" not in model.model.encoder.__dict__ and not cache.outputs


def test_label_logprob_and_decoding_share_the_pass(setup) -> None:
    """The joint pick's pattern: decode at per-row ranks, then score at those ranks; the
    scoring pass runs no encoder, and its scores are those computed without the block."""
    model, processor, features = setup
    ranks = [2, 8, 0]
    batch = {"input_features": features}
    labels = [FAMILY.labels(processor, ["the quick fox", "a star", "we meet"])]
    with use_ranks(model, ranks):
        want = FAMILY.label_logprob(model, batch, labels)
    with reuse_encoder(model) as cache, use_ranks(model, ranks):
        greedy_decode(model, features, max_new_tokens=4, graphs=False)
        got = FAMILY.label_logprob(model, batch, labels)
    assert (cache.rows_encoded, cache.rows_reused) == (3, 3)
    torch.testing.assert_close(got, want)
