"""Training for a study: on-the-fly augmentation, validation loss per rank, early stopping."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from test_train_eval import config, corpus  # noqa: F401  (module-scoped fixture: a tiny corpus)

from flexispeech.data.augment import AugmentConfig
from flexispeech.data.speech import CorpusSplit
from flexispeech.errors import ConfigError
from flexispeech.lora.router import ThresholdRouter
from flexispeech.models.family import get_family
from flexispeech.training.augmented import AudioInputs, Augmenter
from flexispeech.training.batch import PlannedBatch, route_rows
from flexispeech.training.loop import train

AUGMENT = {
    "augment.noise_prob": 1.0,
    "augment.snr_db": "[0.0, 10.0]",
    "augment.speed_prob": 0.5,
    "augment.reverb_prob": 0.5,
    "augment.rt60": "[0.1, 0.3]",
    "augment.spec_augment": "true",
    "augment.time_mask_width": 10,
    "augment.freq_mask_width": 8,
}


def weights(adapter) -> dict[str, torch.Tensor]:
    return load_file(str(adapter / "adapter_model.safetensors"))


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def planned_audio_batch(corpus):  # noqa: F811
    """(family, processor, train split, an SNR threshold router, the first 8 rows routed
    and read as the loader's ``AudioInputs``) on the random tiny Whisper."""
    family = get_family("whisper")
    _, processor = family.load("random:tiny")
    split = CorpusSplit(corpus, "train")
    router = ThresholdRouter([0, 2, 8], weights={"snr_db": -1.0}).calibrate(
        split.all_signals(), target_mean_rank=3.0
    )
    rows = list(range(8))
    planned = PlannedBatch(route_rows(rows, split.signals_of(rows), router), 0, 0, 8, None)
    planned.batch.inputs = AudioInputs(family, processor, split).collate(planned.batch.rows)
    return family, processor, split, router, planned


def log(out) -> list[dict]:
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]


def test_augmented_training_is_deterministic_by_seed_and_resumes_bit_identical(corpus, tmp_path) -> None:  # noqa: F811
    steps = {"train.max_steps": 4, "train.save_every": 2, **AUGMENT}
    a = weights(train(config(corpus, tmp_path / "a", "threshold", **steps), progress=False))
    b = weights(
        train(
            config(corpus, tmp_path / "b", "threshold", **steps, **{"train.num_workers": 2}), progress=False
        )
    )
    assert same(a, b)  # same seed, same adapter (also with loader workers)
    plain = weights(
        train(config(corpus, tmp_path / "plain", "threshold", **{"train.max_steps": 4}), progress=False)
    )
    assert not same(a, plain)  # augmentation changed what was trained on
    other = weights(train(config(corpus, tmp_path / "seed1", "threshold", **steps, seed=1), progress=False))
    assert not same(a, other)

    out = tmp_path / "resumed"
    cfg = config(corpus, out, "threshold", **steps)
    shutil.rmtree(train(cfg, progress=False))  # leaves the checkpoint of step 2 behind
    resumed = train(cfg, resume=True, progress=False)
    assert json.loads((out / "train_summary.json").read_text())["steps_run"] == 2
    assert same(a, weights(resumed))


def test_augmented_rows_are_routed_on_their_recomputed_signals(corpus, monkeypatch) -> None:  # noqa: F811
    family, processor, split, router, planned = planned_audio_batch(corpus)
    cfg = AugmentConfig(noise_prob=1.0, snr_db=[0.0, 0.0], noise_types=["white"], spec_augment=True)
    batch = Augmenter(cfg, family, processor, split, router, torch.device("cpu"))(
        planned, torch.Generator().manual_seed(0)
    )
    cached = split.signals_of(batch.rows)
    assert (batch.signals["snr_db"] < cached["snr_db"] - 10).all()  # noise at 0 dB, measured again
    assert torch.equal(batch.signals["proxy"], cached["proxy"])  # the cached proxy is kept
    assert torch.equal(batch.ranks, router(batch.signals))  # routed as it would be served
    assert set(batch.inputs) == {"input_features", "num_frames", "labels"}
    assert torch.equal(
        batch.signals["duration"], cached["duration"]
    )  # not read by the router: not recomputed

    # The features are made from the augmented audio where it is (log_mel on the device
    # tensors): the same batch as the extractor's host path gives.
    monkeypatch.setattr("flexispeech.training.augmented.collates_on_device", lambda family, processor: False)
    host = Augmenter(cfg, family, processor, split, router, torch.device("cpu"))(
        planned, torch.Generator().manual_seed(0)
    )
    assert host.rows == batch.rows and torch.equal(host.ranks, batch.ranks)
    torch.testing.assert_close(
        host.inputs["input_features"], batch.inputs["input_features"], rtol=1e-5, atol=1e-5
    )
    assert torch.equal(host.inputs["labels"], batch.inputs["labels"])
    assert torch.equal(host.inputs["num_frames"], batch.inputs["num_frames"])
    monkeypatch.undo()

    # A random router keeps the ranks drawn at planning time and reads no signal: none is computed.
    from flexispeech.lora.router import RandomRouter

    calls = []
    monkeypatch.setattr(
        "flexispeech.training.augmented.audio_signals", lambda clip, sr, names: calls.append(set(names)) or {}
    )
    random_router = RandomRouter([0, 2, 8], seed=0)
    rows = list(range(8))
    planned = PlannedBatch(route_rows(rows, split.signals_of(rows), random_router), 0, 0, 8, None)
    planned.batch.inputs = AudioInputs(family, processor, split).collate(planned.batch.rows)
    batch = Augmenter(cfg, family, processor, split, random_router, torch.device("cpu"))(
        planned, torch.Generator().manual_seed(0)
    )
    assert calls == [] and torch.equal(batch.ranks, planned.batch.ranks)


def test_augmentation_with_a_cached_encoder_is_a_config_error(corpus, tmp_path) -> None:  # noqa: F811
    cfg = config(
        corpus, tmp_path / "x", "fixed", **{"model.cache_encoder_layers": 2, "augment.noise_prob": 0.5}
    )
    with pytest.raises(ConfigError, match="augment: needs model.cache_encoder_layers: 0"):
        train(cfg, progress=False)


def test_training_loss_per_rank_splits_the_batch_loss(corpus, tmp_path) -> None:  # noqa: F811
    """With one rank per batch the per-rank loss is the batch loss itself."""
    train(config(corpus, tmp_path / "f", "fixed"), progress=False)
    for entry in log(tmp_path / "f"):
        assert entry["loss_by_rank"].keys() == {"8"} and entry["loss_by_rank"]["8"] == pytest.approx(
            entry["loss"], rel=1e-4
        )
    train(config(corpus, tmp_path / "t", "threshold"), progress=False)
    entries = log(tmp_path / "t")
    assert any(len(e["loss_by_rank"]) > 1 for e in entries)
    for e in entries:
        assert set(e["loss_by_rank"]) <= set(e["ranks"]) and all(
            np.isfinite(v) for v in e["loss_by_rank"].values()
        )
        lo, hi = min(e["loss_by_rank"].values()), max(e["loss_by_rank"].values())
        assert lo - 1e-4 <= e["loss"] <= hi + 1e-4  # a token-weighted mean of the per-rank losses


def _valid_corpus(corpus, tmp_path):  # noqa: F811
    """The mini corpus with its test rows also serving as the validation split."""
    from flexispeech.data.corpus import load_corpus, write_corpus

    rows = []
    for split in ("train", "test"):
        rows += load_corpus(corpus, split).to_list()
    rows += [{**r, "id": r["id"] + "v", "split": "validation"} for r in load_corpus(corpus, "test").to_list()]
    out = tmp_path / "corpus"
    shutil.copytree(corpus / "audio", out / "audio")
    return write_corpus(rows, out, name="mini")


def test_validation_per_rank_and_early_stopping_keep_the_best_adapter(corpus, tmp_path) -> None:  # noqa: F811
    data = _valid_corpus(corpus, tmp_path)
    es = {
        "train.max_steps": 12,
        "train.eval_every": 1,
        "train.early_stopping": "{patience: 2}",
        "train.lr": 0.3,
        "train.save_every": 2,
    }
    adapter = train(config(data, tmp_path / "run", "threshold", **es), progress=False)
    entries = [e for e in log(tmp_path / "run") if "val_loss" in e]
    summary = json.loads((tmp_path / "run" / "train_summary.json").read_text())
    assert entries and all(e["val_examples"] == 6 and e["val_loss_by_rank"] for e in entries)
    losses = [e["val_loss"] for e in entries]
    best = entries[int(np.argmin(losses))]["step"]
    assert summary["kept"]["step"] == best and summary["kept"]["val_loss"] == min(losses)
    assert summary["stopped"].startswith("early stopping") and summary["steps"] == best + 2 < 12
    assert same(weights(adapter), weights(tmp_path / "run" / "best_adapter"))

    # Killed after its first checkpoint, resumed: the same best step and the same adapter.
    out = tmp_path / "resumed"
    cfg = config(data, out, "threshold", **es)
    train(cfg, progress=False)
    shutil.rmtree(out / "adapter")
    (out / "train_summary.json").unlink()
    ckpt = torch.load(out / "checkpoint" / "trainer_state.pt", weights_only=False)["trainer"]
    assert ckpt["best_step"] is not None and ckpt["step"] < summary["steps"]
    resumed = train(cfg, resume=True, progress=False)
    assert same(weights(resumed), weights(adapter))
    assert json.loads((out / "train_summary.json").read_text())["kept"] == summary["kept"]


def test_early_stopping_waits_for_min_steps(corpus, tmp_path) -> None:  # noqa: F811
    """min_steps: the same run that patience 1 stops early trains on to min_steps, and still
    keeps its best validation's adapter."""
    data = _valid_corpus(corpus, tmp_path)
    es = {"train.max_steps": 12, "train.eval_every": 1, "train.lr": 0.3}
    train(
        config(data, tmp_path / "free", "threshold", **es, **{"train.early_stopping": "{patience: 1}"}),
        progress=False,
    )
    free = json.loads((tmp_path / "free" / "train_summary.json").read_text())
    assert free["stopped"].startswith("early stopping") and free["steps"] < 8  # the case min_steps is for

    cfg = config(
        data, tmp_path / "run", "threshold", **es, **{"train.early_stopping": "{patience: 1, min_steps: 8}"}
    )
    train(cfg, progress=False)
    summary = json.loads((tmp_path / "run" / "train_summary.json").read_text())
    entries = [e for e in log(tmp_path / "run") if "val_loss" in e]
    assert summary["steps"] >= 8 and [e["step"] for e in entries] == list(range(1, summary["steps"] + 1))
    losses = [e["val_loss"] for e in entries]
    assert summary["kept"]["step"] == entries[int(np.argmin(losses))]["step"]
    if summary["steps"] < 12:  # stopped: at the first validation at or after min_steps without improvement
        assert summary["stopped"].startswith("early stopping")
        assert entries[-1]["best_step"] < summary["steps"]
    with pytest.raises(ConfigError, match="min_steps"):
        train(
            config(
                data,
                tmp_path / "bad",
                "threshold",
                **es,
                **{"train.early_stopping": "{patience: 1, min_steps: -1}"},
            ),
            progress=False,
        )


def test_early_stopping_needs_validation(corpus, tmp_path) -> None:  # noqa: F811
    with pytest.raises(ConfigError, match="train.early_stopping needs train.eval_every"):
        train(
            config(corpus, tmp_path / "x", "fixed", **{"train.early_stopping": "{patience: 2}"}),
            progress=False,
        )


def routed_validation_setup(corpus):  # noqa: F811
    """The random tiny Whisper with random adapters at ranks (0, 2, 4) (so that the ranks
    change loss and output), the corpus' test split, and a threshold router on its SNR at
    mean rank 2: the validator tests' model, rows and inference router."""
    from flexispeech.lora import FlexiLoraConfig, inject
    from flexispeech.models.random_init import randomize_adapters

    family = get_family("whisper")
    model, processor = family.load("random:tiny")
    inject(model, FlexiLoraConfig(ranks=(0, 2, 4), target_modules=family.default_targets))
    randomize_adapters(model)
    split = CorpusSplit(corpus, "test")
    router = ThresholdRouter([0, 2, 4], weights={"snr_db": -1.0}).calibrate(
        split.all_signals(), target_mean_rank=2.0
    )
    return family, model, processor, split, router


def test_validation_reads_its_rows_once(corpus, monkeypatch) -> None:  # noqa: F811
    """The validation rows, features and ranks are the same at every validation: they are
    read and collated at the first one only, and the loss is that of a fresh read."""
    from flexispeech.training.early_stopping import Validator

    family, model, processor, split, router = routed_validation_setup(corpus)
    reads = []
    original = CorpusSplit.__getitem__
    monkeypatch.setattr(CorpusSplit, "__getitem__", lambda self, i: reads.append(i) or original(self, i))
    validate = Validator(split, family, processor, router, batch_size=4)
    first = validate(model)
    assert sorted(reads) == list(range(len(split)))
    second = validate(model)
    assert len(reads) == len(split)  # nothing read again
    assert second.loss == first.loss and second.by_rank == first.by_rank and second.n == len(split)
    fresh = Validator(split, family, processor, router, batch_size=4)(model)
    assert fresh.loss == first.loss and len(first.by_rank) > 1


def test_features_made_on_the_device_equal_the_workers(corpus) -> None:  # noqa: F811
    """On a GPU the loader's workers only read audio and the training process featurises the
    batch (``DeviceFeatures``): the same rows, order, ranks and inputs as a worker's collate."""
    from flexispeech.training.augmented import DeviceFeatures, features_on_device

    family, processor, split, router, planned = planned_audio_batch(corpus)
    routed = planned.batch
    batch = DeviceFeatures(family, processor, split, torch.device("cpu"))(planned)
    expected = family.collate(processor, [split[i] for i in routed.rows], train=True)
    assert batch.rows == routed.rows and torch.equal(batch.ranks, routed.ranks)
    assert set(batch.inputs) == set(expected)
    for key in expected:
        torch.testing.assert_close(batch.inputs[key], expected[key])
    cuda = torch.device("cuda")
    assert features_on_device("whisper", cuda, 0, True)
    assert not features_on_device("whisper", torch.device("cpu"), 0, True)  # the CPU's cores are the workers'
    assert not features_on_device("whisper", cuda, 4, True)  # a cached encoder prefix reads no features
    assert not features_on_device("wav2vec2", cuda, 0, True) and not features_on_device(
        "whisper", cuda, 0, False
    )

    from flexispeech.training.augmented import Augmenter, batch_maker

    cpu = torch.device("cpu")
    assert (
        batch_maker(AugmentConfig(), family, processor, split, router, cpu, 0, True) is None
    )  # the workers do it
    augment = AugmentConfig(noise_prob=1.0)
    assert isinstance(batch_maker(augment, family, processor, split, router, cpu, 0, True), Augmenter)


def test_validation_wer_is_that_of_decoding_the_rows(corpus) -> None:  # noqa: F811
    """With a normalizer the validator also decodes its rows at the inference router's ranks:
    its WER is eval's WER of the same rows at the same ranks, and the loss is unchanged."""
    from flexispeech.evaluation.evaluate import decode_split
    from flexispeech.evaluation.metrics import english_normalizer, error_counts
    from flexispeech.training.early_stopping import Validator

    family, model, processor, split, router = routed_validation_setup(corpus)
    normalize = english_normalizer()
    plain = Validator(split, family, processor, router, batch_size=4)(model)
    scored = Validator(split, family, processor, router, batch_size=4, normalize=normalize)(model)
    assert plain.wer is None and scored.loss == plain.loss
    records, _ = decode_split(model, family, processor, split, router, batch_size=4, progress=False)
    want = error_counts([r["ref"] for r in records], [r["hyp"] for r in records], normalize)["wer"]
    assert scored.wer == pytest.approx(want)


def test_early_stopping_on_wer_keeps_the_best_wer(corpus, tmp_path, monkeypatch) -> None:  # noqa: F811
    """metric wer: the kept step is the one of the lowest validation WER, whatever the loss
    says (the validation WERs are made to fall and then rise against a falling loss)."""
    from flexispeech.training import early_stopping

    data = _valid_corpus(corpus, tmp_path)
    wers = iter([0.9, 0.5, 0.7, 0.8, 0.6, 0.95])
    original = early_stopping.Validator.__call__

    def fake_wer(self, model):
        got = original(self, model)
        return early_stopping.Validation(got.loss, got.by_rank, got.n, next(wers))

    monkeypatch.setattr(early_stopping.Validator, "__call__", fake_wer)
    es = {"train.max_steps": 6, "train.eval_every": 1, "train.lr": 0.3}
    cfg = config(
        data, tmp_path / "run", "threshold", **es, **{"train.early_stopping": "{patience: 3, metric: wer}"}
    )
    train(cfg, progress=False)
    summary = json.loads((tmp_path / "run" / "train_summary.json").read_text())
    entries = [e for e in log(tmp_path / "run") if "val_wer" in e]
    assert [e["val_wer"] for e in entries] == [0.9, 0.5, 0.7, 0.8, 0.6]  # stopped after 3 without improvement
    assert summary["kept"] == {"step": 2, "why": "best validation wer", "val_wer": 0.5}
    assert summary["stopped"].startswith("early stopping: validation wer")


def test_early_stopping_metric_must_be_known() -> None:
    from flexispeech.training.early_stopping import EarlyStoppingConfig

    EarlyStoppingConfig(patience=1, metric="wer").check(eval_every=1)
    with pytest.raises(ConfigError, match="expected one of"):
        EarlyStoppingConfig(patience=1, metric="cer").check(eval_every=1)


def test_validation_wer_with_the_loop_fallback_is_eval_s(corpus) -> None:  # noqa: F811
    """``train.early_stopping.fallback_rank``: the validator decodes looping rows again as
    ``eval --fallback-rank`` does, so the WER it selects a step on is the one eval reports."""
    from flexispeech.evaluation.evaluate import decode_split
    from flexispeech.evaluation.fallback import Fallback
    from flexispeech.evaluation.metrics import english_normalizer, error_counts
    from flexispeech.training.early_stopping import Validator

    family, model, processor, split, router = routed_validation_setup(corpus)
    normalize = english_normalizer()
    fallback = Fallback(rank=0, threshold=0.01)  # every non-empty hypothesis off rank 0 "loops"
    plain = Validator(split, family, processor, router, batch_size=4, normalize=normalize)(model)
    served = Validator(split, family, processor, router, 4, normalize, fallback)(model)
    records, _ = decode_split(
        model, family, processor, split, router, batch_size=4, progress=False, fallback=fallback
    )
    want = error_counts([r["ref"] for r in records], [r["hyp"] for r in records], normalize)["wer"]
    kept = sum(bool(r.get("fallback", {}).get("kept")) for r in records)
    assert served.wer == pytest.approx(want) and served.fallback_kept == kept > 0
    # (a random model's WER is 1.0 either way: the rows replaced are what shows the fallback ran)
    assert plain.fallback_kept is None and served.loss == plain.loss


def test_fallback_rank_needs_the_wer_metric() -> None:
    from flexispeech.training.early_stopping import EarlyStoppingConfig

    EarlyStoppingConfig(patience=2, metric="wer", fallback_rank=0).check(eval_every=10)
    with pytest.raises(ConfigError, match="fallback_rank: a rank >= 0, with metric: wer"):
        EarlyStoppingConfig(patience=2, metric="loss", fallback_rank=0).check(eval_every=10)
    with pytest.raises(ConfigError, match="got -1"):
        EarlyStoppingConfig(patience=2, metric="wer", fallback_rank=-1).check(eval_every=10)
