"""``FlexiSeq2SeqTrainer`` on a random tiny Whisper: each batch is trained at its routed
ranks (gradients equal flexispeech's own loss at those ranks, nothing above them), decoded
at them in ``predict_with_generate``, and checkpoints hold the adapter."""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.torch import load_file
from transformers import Seq2SeqTrainingArguments, TrainerCallback

from flexispeech import FlexiLoraConfig, ThresholdRouter, attach_router, inject, use_ranks
from flexispeech.data.corpus import write_corpus
from flexispeech.data.speech import CorpusSplit
from flexispeech.integrations.hf import FlexiSeq2SeqTrainer, FlexiSpeechCollator
from flexispeech.lora import flexi_layers
from flexispeech.models.random_init import randomize_adapters
from flexispeech.models.whisper import FAMILY, set_audio_ctx

ROOT = Path(__file__).resolve().parents[2]
SNRS = [0.0, 10.0, 20.0, 30.0]  # -> ranks 8, 4, 2, 0: every row of a batch has its own rank
TEXTS = ["the quick brown fox", "she sells sea shells", "call stella", "the lazy dog"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("hf_corpus")
    (root / "audio").mkdir()
    rows = []
    for i, (snr, text) in enumerate(zip(SNRS, TEXTS)):
        t = np.arange(16000) / 16000
        sf.write(
            root / "audio" / f"u{i}.wav",
            (0.1 * np.sin(2 * np.pi * (150 + 60 * i) * t)).astype(np.float32),
            16000,
        )
        rows.append(
            {
                "id": f"u{i}",
                "audio": f"audio/u{i}.wav",
                "text": text,
                "duration": 1.0,
                "speaker": "v0",
                "split": "train",
                "snr_db": snr,
                "signal_snr_db": snr,
                "signal_duration": 1.0,
            }
        )
    return write_corpus(rows, root, name="hf")


class RecordingRouter:
    """A ThresholdRouter (snr 0 -> 8, 10 -> 4, 20 -> 2, 30 -> 0) that records every call."""

    def __init__(self) -> None:
        self.router = ThresholdRouter((0, 2, 4, 8), weights={"snr_db": -1.0}, thresholds=[-25.0, -15.0, -5.0])
        self.calls: list[tuple[list[float], list[int]]] = []

    def __call__(self, signals):
        ranks = self.router(signals)
        self.calls.append((signals["snr_db"].tolist(), ranks.tolist()))
        return ranks


def tiny_model():
    model, processor = FAMILY.load("random:tiny")
    set_audio_ctx(model, 50, processor)  # a 1-s window: the clips' length
    inject(model, FlexiLoraConfig(ranks=(0, 2, 4, 8), target_modules=FAMILY.default_targets))
    randomize_adapters(model)  # B != 0, or A would get no gradient at all
    return model, processor


def trainer_for(model, processor, corpus: Path, out: Path, router, **args) -> FlexiSeq2SeqTrainer:
    training_args = Seq2SeqTrainingArguments(
        output_dir=str(out),
        per_device_train_batch_size=2,
        per_device_eval_batch_size=2,
        max_steps=2,
        learning_rate=1e-2,
        max_grad_norm=0.0,  # no clipping: the gradients are compared as computed
        report_to=[],
        remove_unused_columns=False,
        use_cpu=True,
        seed=0,
        **args,
    )
    return FlexiSeq2SeqTrainer(
        model=model,
        args=training_args,
        train_dataset=CorpusSplit(corpus, "train"),
        data_collator=FlexiSpeechCollator(processor),
        router=router,
    )


class GradientCheck(TrainerCallback):
    """Before each optimizer step: the adapter gradients, and flexispeech's own loss gradient
    on the same rows at the ranks the router gave (from a copy of the model)."""

    def __init__(self, router: RecordingRouter, split: CorpusSplit, processor) -> None:
        self.router, self.split, self.processor = router, split, processor
        self.steps: list[tuple[list[int], dict, dict]] = []

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        snrs, ranks = self.router.calls[-1]
        got = {n: (layer.lora_A.grad.clone(), layer.lora_B.grad.clone()) for n, layer in flexi_layers(model)}
        ref_model = copy.deepcopy(model)
        ref_model.zero_grad()
        rows = [self.split[SNRS.index(s)] for s in snrs]
        with use_ranks(ref_model, ranks):
            FAMILY.loss(ref_model, FAMILY.collate(self.processor, rows)).backward()
        want = {n: (layer.lora_A.grad, layer.lora_B.grad) for n, layer in flexi_layers(ref_model)}
        self.steps.append((ranks, got, want))


def test_two_steps_train_each_row_at_its_rank(corpus: Path, tmp_path: Path) -> None:
    model, processor = tiny_model()
    router = RecordingRouter()
    trainer = trainer_for(model, processor, corpus, tmp_path / "run", router, save_steps=1)
    check = GradientCheck(router, trainer.train_dataset, processor)
    trainer.add_callback(check)
    trainer.train()
    assert len(check.steps) == 2
    for ranks, got, want in check.steps:
        assert len(set(ranks)) == 2  # two rows, two ranks
        top = max(ranks)
        for name, (grad_a, grad_b) in got.items():
            assert torch.count_nonzero(grad_a[top:]) == 0 and torch.count_nonzero(grad_b[:, top:]) == 0, name
            assert torch.count_nonzero(grad_b[:, :top]) > 0, name
            torch.testing.assert_close(grad_a, want[name][0], rtol=1e-4, atol=1e-6)
            torch.testing.assert_close(grad_b, want[name][1], rtol=1e-4, atol=1e-6)
    # Checkpoints hold the adapter (and its router), not a copy of the frozen model.
    ckpt = tmp_path / "run" / "checkpoint-2"
    assert (ckpt / "adapter_config.json").is_file() and not (ckpt / "model.safetensors").exists()
    saved = load_file(str(ckpt / "adapter_model.safetensors"))
    for name, layer in flexi_layers(model):
        assert torch.equal(saved[f"{name}.lora_B"], layer.lora_B.detach())


def test_resume_from_a_checkpoint_ends_with_the_same_adapter(corpus: Path, tmp_path: Path) -> None:
    model, processor = tiny_model()
    trainer_for(model, processor, corpus, tmp_path / "run", RecordingRouter(), save_steps=1).train()
    resumed, _ = tiny_model()  # the same start; the checkpoint's adapter must replace it
    trainer = trainer_for(resumed, processor, corpus, tmp_path / "again", RecordingRouter(), save_steps=1)
    trainer.train(resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-1"))
    for (name, a), (_, b) in zip(flexi_layers(model), flexi_layers(resumed)):
        torch.testing.assert_close(b.lora_A, a.lora_A, rtol=0, atol=1e-6, msg=name)
        torch.testing.assert_close(b.lora_B, a.lora_B, rtol=0, atol=1e-6, msg=name)


def test_predict_with_generate_decodes_at_routed_ranks(corpus: Path, tmp_path: Path) -> None:
    model, processor = tiny_model()
    router = RecordingRouter()
    attach_router(model, router.router)
    trainer = trainer_for(
        model, processor, corpus, tmp_path / "run", None, predict_with_generate=True, generation_max_length=8
    )
    split = trainer.train_dataset
    out = trainer.predict(split)
    batch = FAMILY.collate(processor, [split[i] for i in range(len(split))], train=False)
    ranks = router.router({"snr_db": torch.tensor(SNRS)})
    with use_ranks(model, ranks):
        want = FAMILY.generate_ids(model, batch, max_new_tokens=6)
    base = FAMILY.generate_ids(model, batch, max_new_tokens=6)  # all at r_max: another output
    got = [row[: len(w)].tolist() for row, w in zip(out.predictions, want)]
    assert got == [w.tolist() for w in want]
    assert got != [b.tolist() for b in base]


def test_example_script_trains_and_saves_an_adapter(corpus: Path, tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location(
        "hf_trainer_whisper", ROOT / "examples" / "hf_trainer_whisper.py"
    )
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    adapter = example.main(
        [
            str(corpus),
            str(tmp_path / "out"),
            "--model",
            "random:tiny",
            "--max-steps",
            "2",
            "--batch-size",
            "2",
            "--audio-ctx",
            "50",
        ]
    )
    assert (adapter / "adapter_model.safetensors").is_file() and (adapter / "router.json").is_file()
