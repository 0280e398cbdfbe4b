"""Distillation towards the base model (train.keep_base): the KL term by hand, the teacher
pass at rank 0, and a trainer run that ends closer to the base model than one without it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from flexispeech.errors import ConfigError
from flexispeech.lora.config import FlexiLoraConfig
from flexispeech.lora.inject import adapter_parameters, inject
from flexispeech.lora.ranks import adapter_off, use_ranks
from flexispeech.models.example import Example
from flexispeech.models.family import CollatedInputs
from flexispeech.models.random_init import randomize_adapters
from flexispeech.models.whisper import FAMILY
from flexispeech.training.config import KeepBaseConfig, load_config
from flexispeech.training.keep_base import KeepBaseInputs, base_kl, capture_logits
from flexispeech.training.rank_losses import capture_row_losses

RANKS = (0, 2, 8)


@pytest.fixture(scope="module")
def tiny():
    """A random tiny Whisper (1-s window) with random adapters, and a collated batch of 3."""
    from flexispeech.models.whisper import set_audio_ctx

    model, processor = FAMILY.load("random:tiny")
    set_audio_ctx(model, 50, processor)
    inject(model, FlexiLoraConfig(ranks=RANKS, target_modules=("q_proj", "fc1"), compute_path="masked"))
    randomize_adapters(model, b_scale=0.1)
    rng = np.random.default_rng(0)
    examples = [
        Example(id=f"u{i}", text=text, audio=rng.normal(0, 0.1, 12000).astype(np.float32))
        for i, text in enumerate(["the quick brown fox", "jumps over the dog", "please call stella"])
    ]
    return model, CollatedInputs(FAMILY, processor, None), FAMILY.collate(processor, examples, train=True)


def test_the_kl_term_by_hand() -> None:
    gen = torch.Generator().manual_seed(0)
    base, adapted = torch.randn(2, 3, 5, generator=gen), torch.randn(2, 3, 5, generator=gen)
    labels = torch.tensor([[1, 2, -100], [base[1, 0].argmax(), 0, 4]])
    p, q = adapted.softmax(-1), base.softmax(-1)
    kl = (q * (q.log() - p.log())).sum(-1)  # [2, 3]: KL(base || adapted) per position
    labelled = labels != -100
    assert float(base_kl(base, adapted, labels)) == pytest.approx(float(kl[labelled].mean()), rel=1e-5)
    correct = labelled & (base.argmax(-1) == labels)
    assert correct.any() and not correct.all()
    assert float(base_kl(base, adapted, labels, "base_correct")) == pytest.approx(
        float(kl[correct].mean()), rel=1e-5
    )
    # No position pays: zero, and still a tensor of the graph (backward works).
    none = torch.full_like(labels, -100)
    adapted.requires_grad_(True)
    zero = base_kl(base, adapted, none)
    zero.backward()
    assert float(zero.detach()) == 0.0 and torch.all(adapted.grad == 0)
    assert float(base_kl(base, base, labels)) == pytest.approx(0.0, abs=1e-6)


def test_the_loss_adds_the_kl_from_the_base_model(tiny) -> None:
    model, inputs, batch = tiny
    ranks = torch.tensor([8, 8, 2])
    keep = KeepBaseInputs(inputs, KeepBaseConfig(weight=0.5))
    with use_ranks(model, ranks), capture_row_losses(model) as rows:
        loss = keep.loss(model, batch)
    assert len(rows) == 1  # the teacher pass is not logged as a training pass
    # By hand: the base model's logits (adapters off) and the adapted logits at the ranks.
    with torch.no_grad(), adapter_off(model), capture_logits(model) as teacher:
        inputs.loss(model, batch)
    with torch.no_grad(), use_ranks(model, ranks), capture_logits(model) as student:
        ce = inputs.loss(model, batch)
    kl = base_kl(teacher[0][0], student[0][0], student[0][1])
    assert float(kl) > 1e-4  # random adapters move the outputs
    assert float(loss.detach()) == pytest.approx(float(ce + 0.5 * kl), rel=1e-5)
    assert float(keep.last_kl) == pytest.approx(float(kl), rel=1e-5)
    # The KL term has gradients of its own: with the labels' term subtracted, they remain.
    model.zero_grad(set_to_none=True)
    with use_ranks(model, ranks):
        (keep.loss(model, batch) - inputs.loss(model, batch)).backward()
    assert sum(float(p.grad.abs().sum()) for p in adapter_parameters(model) if p.grad is not None) > 0
    model.zero_grad(set_to_none=True)


def test_at_rank_zero_the_term_vanishes(tiny) -> None:
    model, inputs, batch = tiny
    keep = KeepBaseInputs(inputs, KeepBaseConfig(weight=3.0))
    with torch.no_grad(), use_ranks(model, torch.tensor([0, 0, 0])):
        assert float(keep.loss(model, batch)) == pytest.approx(float(inputs.loss(model, batch)), rel=1e-6)
    assert float(keep.last_kl) == pytest.approx(0.0, abs=1e-7)


def test_bad_keep_base_settings_are_config_errors() -> None:
    with pytest.raises(ConfigError, match=r"train\.keep_base\.tokens"):
        load_config(None, ["train.keep_base={weight: 1.0, tokens: some}"])
    with pytest.raises(ConfigError, match=r"train\.keep_base\.weight"):
        load_config(None, ["train.keep_base.weight=-1"])
    assert load_config(None, ["train.keep_base.weight=0.5"]).train.keep_base.weight == 0.5


@pytest.mark.parametrize("precision", ["no", "bf16"])
def test_a_run_with_the_term_ends_closer_to_the_base(tmp_path, tiny, precision) -> None:
    """The same run with and without train.keep_base: afterwards its adapter's outputs on
    the training batch are closer to the base model's (smaller KL), and the log has the term.
    On a GPU machine the runs train on the GPU; bf16 is the gpu profile's precision (eager:
    no CUDA graphs under autocast), where the teacher pass runs under autocast too."""
    import soundfile as sf

    from flexispeech.data.corpus import write_corpus
    from flexispeech.lora.io import load_adapter
    from flexispeech.training.loop import train

    _, inputs, _ = tiny
    (tmp_path / "c" / "audio").mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows, examples = [], []
    for i, text in enumerate(["the quick fox", "call stella now", "jumps over it", "a red dog"]):
        audio = rng.normal(0, 0.05, 8000).astype(np.float32)
        sf.write(tmp_path / "c" / "audio" / f"u{i}.wav", audio, 16000)
        rows.append(
            {
                "id": f"u{i}",
                "audio": f"audio/u{i}.wav",
                "text": text,
                "duration": 0.5,
                "speaker": "v",
                "split": "train",
                "signal_duration": 0.5,
            }
        )
        examples.append(Example(id=f"u{i}", text=text, audio=audio))
    corpus = write_corpus(rows, tmp_path / "c", name="mini")

    def run(name: str, *extra: str):
        cfg = load_config(
            None,
            [
                f"output_dir={tmp_path / name}",
                "model.source=random:tiny",
                f"data.corpus={corpus}",
                "model.audio_ctx=50",
                "train.batch_size=4",
                "train.max_steps=6",
                "train.warmup_steps=0",
                "train.lr=0.02",
                "train.log_every=3",
                "adapter.ranks=[8]",
                "adapter.target_modules=[q_proj, fc1]",
                "routing.mode=fixed",
                f"train.mixed_precision={precision}",
                *extra,
            ],
        )
        adapter = train(cfg, progress=False)
        model, processor = FAMILY.load("random:tiny")
        from flexispeech.models.whisper import set_audio_ctx

        set_audio_ctx(model, 50, processor)
        load_adapter(model, adapter)
        batch = FAMILY.collate(processor, examples, train=True)
        with torch.no_grad(), adapter_off(model), capture_logits(model) as teacher:
            inputs.loss(model, batch)
        with torch.no_grad(), use_ranks(model, 8), capture_logits(model) as student:
            inputs.loss(model, batch)
        log = [json.loads(ln) for ln in (tmp_path / name / "train_log.jsonl").read_text().splitlines()]
        return float(base_kl(teacher[0][0], student[0][0], student[0][1])), log

    kl_plain, log_plain = run("plain")
    kl_kept, log_kept = run("kept", "train.keep_base.weight=100")
    assert kl_kept < 0.25 * kl_plain, (kl_kept, kl_plain)  # measured: 0.0009 against 0.015
    assert all("keep_base_kl" in e for e in log_kept) and not any("keep_base_kl" in e for e in log_plain)
