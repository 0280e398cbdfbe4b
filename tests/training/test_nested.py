"""Nested-rank training: which rows train at which sampled ranks, and which components
each row's gradient reaches."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flexispeech.errors import ConfigError
from flexispeech.lora.config import FlexiLoraConfig
from flexispeech.lora.inject import flexi_layers, inject
from flexispeech.lora.ranks import use_ranks
from flexispeech.models.example import Example
from flexispeech.models.family import CollatedInputs
from flexispeech.models.whisper import FAMILY
from flexispeech.training.config import NestedConfig, load_config
from flexispeech.training.nested import check_nested, nested_generator, nested_loss, sample_ranks

RANKS = (0, 2, 4, 8)


@pytest.fixture(scope="module")
def tiny():
    """A random tiny Whisper with adapters whose B is nonzero (so A gets gradients too)."""
    model, processor = FAMILY.load("random:tiny")
    from flexispeech.models.whisper import set_audio_ctx

    set_audio_ctx(model, 50, processor)  # 1 s window: a fast forward pass
    inject(model, FlexiLoraConfig(ranks=RANKS, target_modules=("q_proj", "fc1"), compute_path="masked"))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _, layer in flexi_layers(model):
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=gen) * 0.1)
    rng = np.random.default_rng(0)
    examples = [
        Example(id=f"u{i}", text=text, audio=rng.normal(0, 0.1, 12000).astype(np.float32))
        for i, text in enumerate(["the quick brown fox", "jumps over the dog", "please call stella"])
    ]
    batch = FAMILY.collate(processor, examples, train=True)
    batch["labels"] = batch["labels"][:, :4]  # equal token counts per row: the joint mean splits evenly
    return model, CollatedInputs(FAMILY, processor, None), batch


def grads(model, loss_fn) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    loss = loss_fn()
    loss.backward()
    return {name: layer.lora_A.grad.detach().clone() for name, layer in flexi_layers(model)}, float(
        loss.detach()
    )


def test_sampled_ranks_follow_the_mode() -> None:
    routed = torch.tensor([8, 4, 2, 0, 8, 4])
    gen = nested_generator(0, 0, 0)
    rows, sampled = sample_ranks(routed, RANKS, NestedConfig(prob=1.0, mode="lower"), gen)
    assert rows.tolist() == [0, 1, 4, 5]  # rank 2 has no positive rank below it, rank 0 none at all
    assert all(s < r and s > 0 for s, r in zip(sampled.tolist(), routed[rows].tolist()))
    rows, sampled = sample_ranks(
        routed, RANKS, NestedConfig(prob=1.0, mode="random"), nested_generator(0, 0, 0)
    )
    assert rows.tolist() == [0, 1, 2, 3, 4, 5]  # every row, the one at rank 0 too
    assert all(s != r and s > 0 for s, r in zip(sampled.tolist(), routed.tolist()))
    # The draws are a function of (seed, epoch, batch): a resumed run repeats them.
    again = sample_ranks(routed, RANKS, NestedConfig(prob=0.5, mode="random"), nested_generator(3, 1, 7))
    assert all(
        torch.equal(a, b)
        for a, b in zip(
            again,
            sample_ranks(routed, RANKS, NestedConfig(prob=0.5, mode="random"), nested_generator(3, 1, 7)),
        )
    )
    many = sample_ranks(torch.full((4000,), 8), RANKS, NestedConfig(prob=0.25), nested_generator(0, 0, 1))[1]
    assert 900 < many.numel() < 1100 and set(many.tolist()) == {2, 4}


def test_gradients_reach_below_the_sampled_rank_and_never_above_the_routed_one(tiny) -> None:
    model, inputs, batch = tiny
    routed = torch.tensor([4, 4, 4])
    cfg = NestedConfig(prob=1.0, mode="lower")  # every row also at rank 2
    g, _ = grads(
        model, lambda: nested_loss(inputs, model, batch, routed, RANKS, cfg, nested_generator(0, 0, 0))
    )
    for a in g.values():
        assert a[:4].abs().sum(dim=1).min() > 0  # every component below the routed rank (4) is trained
        assert torch.all(a[4:] == 0)  # none above it
    # mode random: a row routed to 0 trains at a sampled positive rank (up to 8 here)
    routed0 = torch.tensor([0, 0, 0])
    cfg = NestedConfig(prob=1.0, mode="random")
    rows, sampled = sample_ranks(routed0, RANKS, cfg, nested_generator(0, 0, 0))
    g, _ = grads(
        model, lambda: nested_loss(inputs, model, batch, routed0, RANKS, cfg, nested_generator(0, 0, 0))
    )
    top = int(sampled.max())
    for a in g.values():
        assert a[:top].abs().sum() > 0 and torch.all(a[top:] == 0)


@pytest.mark.parametrize("weight", [1.0, 3.0])
def test_joint_and_separate_forwards_give_the_formula(tiny, weight: float) -> None:
    """(L_routed + w L_sampled) / (1 + w), L at the routed and at the sampled ranks, by hand."""
    model, inputs, batch = tiny
    routed = torch.tensor([8, 8, 4])
    joint = NestedConfig(prob=1.0, mode="lower", weight=weight, forward="joint")
    separate = NestedConfig(prob=1.0, mode="lower", weight=weight, forward="separate")
    rows, sampled = sample_ranks(routed, RANKS, joint, nested_generator(0, 0, 0))
    assert rows.tolist() == [0, 1, 2]

    def by_hand() -> torch.Tensor:
        with use_ranks(model, routed):
            a = inputs.loss(model, batch)
        with use_ranks(model, sampled):
            b = inputs.loss(model, batch)
        return (a + weight * b) / (1 + weight)

    g_hand, l_hand = grads(model, by_hand)
    g_sep, l_sep = grads(
        model, lambda: nested_loss(inputs, model, batch, routed, RANKS, separate, nested_generator(0, 0, 0))
    )
    g_joint, l_joint = grads(
        model, lambda: nested_loss(inputs, model, batch, routed, RANKS, joint, nested_generator(0, 0, 0))
    )
    assert l_sep == pytest.approx(l_hand, rel=1e-5)
    if weight == 1.0:  # the joint token mean is the formula's value only when the parts weigh the same
        assert l_joint == pytest.approx(l_hand, rel=1e-5)
    for name in g_hand:
        torch.testing.assert_close(g_sep[name], g_hand[name], rtol=1e-4, atol=1e-7)
        torch.testing.assert_close(g_joint[name], g_hand[name], rtol=1e-4, atol=1e-7)


def test_bad_nested_settings_are_config_errors() -> None:
    with pytest.raises(ConfigError, match=r"train\.nested\.mode"):
        load_config(None, ["train.nested={prob: 1.0, mode: upper}"])
    with pytest.raises(ConfigError, match=r"train\.nested\.prob"):
        load_config(None, ["train.nested.prob=1.5"])
    with pytest.raises(ConfigError, match="two positive ranks"):
        check_nested(NestedConfig(prob=1.0), [0, 16])
    check_nested(NestedConfig(prob=0.0), [16])  # off: any ranks


def test_the_trainer_trains_the_sampled_ranks(tmp_path) -> None:
    """Routed at rank 2 only, a run trains components 2..7 only through nesting (mode random).
    (B starts at zero, so its columns are what the first steps move.)"""
    from safetensors.torch import load_file

    from flexispeech.training.loop import train

    corpus = noise_corpus(tmp_path / "c", signals=True)

    def run(name: str, *extra: str) -> dict[str, torch.Tensor]:
        cfg = tiny_run(tmp_path / name, corpus, "routing.mode=fixed", "routing.rank=2", *extra)
        return load_file(str(train(cfg, progress=False) / "adapter_model.safetensors"))

    plain, nested = run("plain"), run("nested", "train.nested={prob: 1.0, mode: random}")
    b = [k for k in plain if k.endswith("lora_B")]
    assert all(torch.all(plain[k][:, 2:] == 0) for k in b)  # without nesting: never trained
    assert all(torch.any(plain[k][:, :2] != 0) for k in b)
    assert all(torch.any(nested[k][:, 2:4] != 0) for k in b)  # with it: trained at sampled ranks 4 and 8


def tiny_run(out, corpus, *extra: str):  # type: ignore[no-untyped-def]
    """The trainer tests' config: random tiny Whisper, 1-s window, ranks 0-8, 2 steps of 4
    rows, then ``extra`` overrides."""
    base = ["model.source=random:tiny", "model.audio_ctx=50", "train.batch_size=4", "train.max_steps=2"]
    return load_config(
        None,
        [
            f"output_dir={out}",
            f"data.corpus={corpus}",
            *base,
            "train.warmup_steps=1",
            "adapter.ranks=[0, 2, 4, 8]",
            *extra,
        ],
    )


def noise_corpus(root, signals: bool, validation: int = 0):  # type: ignore[no-untyped-def]
    """8 training rows (and ``validation`` validation rows) of 0.5-s noise, "the quick fox";
    with ``signals`` the cached duration signal a fixed router's corpus has."""
    import soundfile as sf

    from flexispeech.data.corpus import write_corpus

    (root / "audio").mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(8 + validation):
        sf.write(root / "audio" / f"u{i}.wav", rng.normal(0, 0.05, 8000).astype(np.float32), 16000)
        row = {
            "id": f"u{i}",
            "audio": f"audio/u{i}.wav",
            "text": "the quick fox",
            "duration": 0.5,
            "speaker": "v",
            "split": "train" if i < 8 else "validation",
        }
        rows.append(row | ({"signal_duration": 0.5} if signals else {}))
    return write_corpus(rows, root, name="mini")


def test_a_corpus_without_cached_signals_trains_at_random_ranks(tmp_path) -> None:
    """The gpu recipe trains the random-rank runs while ``flexispeech signals`` runs beside
    them, on a corpus with no signal column yet: training at random ranks with nested rows,
    and validating at the fixed inference rank, needs none. Fails with "signals are empty"
    where routing takes the batch size from the signals alone."""
    from flexispeech.training.loop import train

    corpus = noise_corpus(tmp_path / "c", signals=False, validation=4)
    cfg = tiny_run(
        tmp_path / "run",
        corpus,
        "train.eval_every=1",
        "train.eval_examples=4",
        "routing.mode=random",
        "train.nested={prob: 1.0, mode: random}",
    )
    train(cfg, progress=False)
    import json

    summary = json.loads((tmp_path / "run" / "train_summary.json").read_text())
    assert summary["steps_run"] == 2 and sum(summary["train_rank_histogram"].values()) == 8
    log = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert any("val_loss" in entry for entry in log)
