"""The pooled base-encoder embedding: a hand-computed mean over valid positions, adapter
off, cached as a vector column that a learned router (the paper's router) reads."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from mini_corpus import write_mini_corpus

from flexispeech.cli import main
from flexispeech.data.speech import CorpusSplit
from flexispeech.lora.config import FlexiLoraConfig
from flexispeech.lora.inject import flexi_layers, inject
from flexispeech.lora.ranks import use_ranks
from flexispeech.lora.router import LearnedRouter
from flexispeech.models.example import Example
from flexispeech.models.whisper import FAMILY, set_audio_ctx
from flexispeech.signals.cache import cache_embedding
from flexispeech.signals.embedding import pooled_embedding
from flexispeech.training.config import load_config
from flexispeech.training.loop import train


@pytest.fixture(scope="module")
def tiny():
    model, processor = FAMILY.load("random:tiny")
    set_audio_ctx(model, 100, processor)  # a 2-s window
    return model, processor


def test_pooled_embedding_is_the_mean_over_valid_positions(tiny) -> None:
    model, processor = tiny
    rng = np.random.default_rng(0)
    examples = [
        Example(id="a", text="", audio=rng.normal(0, 0.1, 8000).astype(np.float32)),  # 0.5 s
        Example(id="b", text="", audio=rng.normal(0, 0.1, 19_200).astype(np.float32)),
    ]  # 1.2 s
    batch = FAMILY.collate(processor, examples, train=False)
    assert batch["num_frames"].tolist() == [50, 120]  # 10-ms frames
    with torch.no_grad():
        hidden = model.get_encoder()(batch["input_features"]).last_hidden_state  # [2, 100, d]
    expected = torch.stack([hidden[0, :25].mean(0), hidden[1, :60].mean(0)])  # 20-ms positions
    got = pooled_embedding(model, batch["input_features"], batch["num_frames"])
    assert got.shape == (2, model.config.d_model)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    # the base encoder's: an adapter with nonzero weights and ranks in force changes nothing
    adapted, _ = FAMILY.load("random:tiny")
    set_audio_ctx(adapted, 100)
    inject(adapted, FlexiLoraConfig(ranks=(0, 4), target_modules=("q_proj", "fc1")))
    with torch.no_grad():
        for _, layer in flexi_layers(adapted):
            layer.lora_B.normal_(0, 1.0)
        with use_ranks(adapted, 4):
            assert not torch.allclose(
                adapted.get_encoder()(batch["input_features"]).last_hidden_state, hidden
            )
            torch.testing.assert_close(
                pooled_embedding(adapted, batch["input_features"], batch["num_frames"]), got
            )


def _corpus(root):
    rng = np.random.default_rng(0)
    clips = []
    for i in range(20):
        dur = 0.4 + 0.1 * (i % 5)
        audio = rng.normal(0, 0.05 * (1 + i % 4), int(16000 * dur))
        clips.append((audio, "test" if i >= 16 else "train", dur))
    return write_mini_corpus(root, clips, [{"base_wer": (i % 4) / 4} for i in range(20)])


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return _corpus(tmp_path_factory.mktemp("corpus"))


def test_signals_embedding_column_feeds_a_learned_router(corpus, tmp_path, capsys) -> None:
    assert main(["signals", str(corpus), "--splits", "train,test", "--embedding"]) == 2
    assert "--embedding needs --model" in capsys.readouterr().err
    assert (
        main(
            [
                "signals",
                str(corpus),
                "--splits",
                "train,test",
                "--model",
                "random:tiny",
                "--audio-ctx",
                "100",
                "--embedding",
                "--batch-size",
                "8",
            ]
        )
        == 0
    )
    assert "pooled encoder embedding computed (in the same pass)" in capsys.readouterr().out
    split = CorpusSplit(corpus, "train")
    signals = split.all_signals()
    assert signals["embedding"].shape == (16, 64)  # random:tiny has d_model 64
    # the cached vector is the embedding of the row's audio
    model, processor = FAMILY.load("random:tiny")
    set_audio_ctx(model, 100, processor)
    inputs = FAMILY.collate(processor, [split[3]], train=False)
    torch.testing.assert_close(
        signals["embedding"][3:4], pooled_embedding(model, inputs["input_features"], inputs["num_frames"])
    )
    assert isinstance(split[3].signals["embedding"], list) and "embedding" not in split.record(3)["signals"]
    # the proxy's decoding pass made it; a pass of its own makes the same vectors
    assert cache_embedding(corpus, "train", model, processor, batch_size=8, max_duration=2.0, force=True)
    torch.testing.assert_close(CorpusSplit(corpus, "train").all_signals()["embedding"], signals["embedding"])

    # an embedding of another width (another model's encoder: tiny.en 384, whisper-base 512)
    # is made again, not taken as this model's
    from flexispeech.data.corpus import add_columns

    add_columns(corpus, "train", {"signal_embedding": [[0.5, 0.5, 0.5]] * 16})
    assert cache_embedding(corpus, "train", model, processor, batch_size=8, max_duration=2.0)
    torch.testing.assert_close(CorpusSplit(corpus, "train").all_signals()["embedding"], signals["embedding"])
    assert not cache_embedding(corpus, "train", model, processor, batch_size=8, max_duration=2.0)  # its own

    cfg = load_config(
        None,
        [
            f"output_dir={tmp_path / 'emb'}",
            "name=emb",
            "model.source=random:tiny",
            f"data.corpus={corpus}",
            "model.audio_ctx=100",
            "train.batch_size=4",
            "train.max_steps=2",
            "train.warmup_steps=1",
            "adapter.ranks=[0, 2, 4]",
            "routing.mode=learned",
            "routing.features=[embedding, duration]",
            "routing.target_mean_rank=2.0",
            "routing.label_noise=0.1",
        ],
    )
    adapter = train(cfg, progress=False)
    saved = json.loads((adapter / "router.json").read_text())
    assert saved["features"] == ["embedding", "duration"] and saved["widths"] == [64, 1]
    router = LearnedRouter._from_fields({k: v for k, v in saved.items() if k != "type"})
    ranks = router(signals)
    assert ranks.shape == (16,) and set(ranks.tolist()) <= {0, 2, 4}
    assert main(["eval", "--data", str(corpus), "--adapter", str(adapter), "--batch-size", "4"]) == 0


def test_live_signals_give_the_base_encoder_embedding(tiny) -> None:
    """A clip with no cached embedding (``eval`` on another corpus, ``transcribe``) gets it
    from the base encoder with the adapter off: the same vector an unadapted model gives."""
    import copy

    from flexispeech.models.random_init import randomize_adapters
    from flexispeech.signals.live import live_signals

    model, processor = tiny
    rng = np.random.default_rng(0)
    clips = [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in (16000, 24000)]
    examples = [Example(id=str(i), text="", audio=c) for i, c in enumerate(clips)]
    batch = FAMILY.collate(processor, examples, train=False)
    expected = pooled_embedding(model, batch["input_features"], batch["num_frames"])
    adapted = copy.deepcopy(model)
    inject(adapted, FlexiLoraConfig(ranks=(0, 4), target_modules=FAMILY.default_targets))
    randomize_adapters(adapted)
    with use_ranks(adapted, [4, 4]):
        assert not torch.allclose(
            adapted.get_encoder()(batch["input_features"]).last_hidden_state,
            model.get_encoder()(batch["input_features"]).last_hidden_state,
        )  # the adapter changes the encoder; the signal must not see it
        out = live_signals(clips, batch, ["embedding"], "whisper", adapted, processor)
    assert set(out) == {"duration", "snr_db", "speech_activity", "embedding"}
    torch.testing.assert_close(torch.tensor(out["embedding"]), expected)


def test_embedding_only_caches_the_embedding_without_decoding(tmp_path, capsys, monkeypatch) -> None:
    """--embedding-only: the gate's training-split signal with no decoding pass (no proxy,
    no base WER), the embedding of each row's audio."""
    import flexispeech.signals.cache as cache

    corpus = _corpus(tmp_path / "corpus")  # a fresh copy: no signal columns yet

    assert main(["signals", str(corpus), "--splits", "train", "--embedding-only"]) == 2
    assert "--embedding-only needs --model" in capsys.readouterr().err

    def no_decoding(*args, **kwargs):
        raise AssertionError("--embedding-only decoded")

    monkeypatch.setattr(cache, "cache_model_signals", no_decoding)
    args = ["signals", str(corpus), "--splits", "train", "--model", "random:tiny", "--audio-ctx", "100"]
    assert main([*args, "--embedding-only", "--batch-size", "8"]) == 0
    out = capsys.readouterr().out
    assert "pooled encoder embedding computed" in out and "proxy" not in out
    split = CorpusSplit(corpus, "train")
    signals = split.all_signals()
    assert signals["embedding"].shape == (16, 64) and "proxy" not in signals
    model, processor = FAMILY.load("random:tiny")
    set_audio_ctx(model, 100, processor)
    inputs = FAMILY.collate(processor, [split[5]], train=False)
    torch.testing.assert_close(
        signals["embedding"][5:6], pooled_embedding(model, inputs["input_features"], inputs["num_frames"])
    )
