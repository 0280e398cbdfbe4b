"""A miniature train + eval on a random-initialised tiny Whisper, every routing mode, in seconds."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.torch import load_file

from flexispeech.cli import main
from flexispeech.data.corpus import write_corpus
from flexispeech.errors import ConfigError
from flexispeech.lora.inject import adapter_parameters
from flexispeech.lora.io import load_adapter, read_adapter_config
from flexispeech.training.checkpoint import find_checkpoint
from flexispeech.training.config import load_config
from flexispeech.training.loop import Trainer, train

RECIPES = Path(__file__).resolve().parents[2] / "recipes"

WORDS = "the quick brown fox jumps over the lazy dog please call stella".split()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    (root / "audio").mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for i in range(24):
        dur = 0.5 + 0.1 * (i % 7)
        audio = (0.1 * np.sin(2 * np.pi * (200 + 20 * i) * np.arange(int(16000 * dur)) / 16000)).astype(
            np.float32
        )
        snr = float(rng.uniform(0, 30))
        audio += rng.normal(0, 0.1 * 10 ** (-snr / 20), audio.shape).astype(np.float32)
        sf.write(root / "audio" / f"u{i}.wav", audio, 16000)
        split = "test" if i >= 18 else "train"
        rows.append(
            {
                "id": f"u{i}",
                "audio": f"audio/u{i}.wav",
                "text": " ".join(WORDS[i % 5 : i % 5 + 3]),
                "duration": dur,
                "speaker": f"v{i % 3}",
                "split": split,
                "voice": f"v{i % 3}",
                "seen_voice": i % 3 != 2,
                "channel": "telephone" if i % 4 == 0 else "wideband",
                "snr_db": snr,
                "signal_snr_db": snr + float(rng.normal(0, 2)),
                "signal_duration": dur,
                "signal_proxy": (30 - snr) / 10,
                "base_wer": (30 - snr) / 30,
            }
        )
    return write_corpus(rows, root, name="mini")


def config(corpus, out, mode: str, **extra):
    overrides = [
        f"output_dir={out}",
        f"name={mode}",
        "model.source=random:tiny",
        f"data.corpus={corpus}",
        "model.audio_ctx=100",
        "train.batch_size=4",
        "train.max_steps=3",
        "train.warmup_steps=1",
        "train.log_every=1",
        "train.lr=1e-2",
        "adapter.ranks=[0, 2, 4, 8]",
        f"routing.mode={mode}",
        "routing.weights={snr_db: -1.0, proxy: 1.0}",
        "routing.features=[snr_db, duration, proxy]",
    ] + [f"{k}={v}" for k, v in extra.items()]
    return load_config(None, overrides)


@pytest.mark.parametrize("mode", ["fixed", "random", "threshold", "learned", "inconsistent"])
def test_every_routing_mode_trains_and_saves(corpus, tmp_path, mode: str) -> None:
    adapter = train(config(corpus, tmp_path / mode, mode), progress=False)
    summary = json.loads((tmp_path / mode / "train_summary.json").read_text())
    assert summary["steps"] == 3 and summary["examples_seen"] == 12
    log = [json.loads(line) for line in (tmp_path / mode / "train_log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log] == [1, 2, 3] and all(np.isfinite(e["loss"]) for e in log)
    assert all(e["utt_per_s"] > 0 and 0 <= e["data_wait_share"] <= 1 for e in log)  # throughput per line
    assert summary["utt_per_s"] > 0 and 0 < summary["data_wait_s"] and 0 <= summary["data_wait_share"] <= 1
    meta = read_adapter_config(adapter)["config"]["metadata"]
    assert meta["base_model"] == "random:tiny" and meta["routing"] == mode
    assert (adapter / "router.json").is_file()
    hist = summary["train_rank_histogram"]
    if mode == "fixed":
        assert hist == {"8": 12}
    else:
        assert len(hist) > 1  # several ranks used in training


def test_training_changes_only_the_adapter_and_is_deterministic(corpus, tmp_path) -> None:
    from flexispeech.models.family import get_family

    trainer = Trainer(config(corpus, tmp_path / "a", "threshold"), progress=False)
    trainer.setup()
    model = trainer.model
    adapter_ids = {id(p) for p in adapter_parameters(model)}
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    a = trainer.train()
    after = dict(model.named_parameters())
    frozen = [name for name, p in after.items() if id(p) not in adapter_ids]
    trained = [name for name, p in after.items() if id(p) in adapter_ids]
    assert len(frozen) > len(trained) > 0
    assert [
        n for n in frozen if not torch.equal(after[n], before[n])
    ] == []  # the base model is untouched, bit for bit
    assert [n for n in trained if torch.equal(after[n], before[n])] == []  # every lora_A and lora_B moved

    # Same seed, same adapter, also with batches collated by two DataLoader workers.
    b = train(config(corpus, tmp_path / "b", "threshold", **{"train.num_workers": 2}), progress=False)
    wa, wb = load_file(str(a / "adapter_model.safetensors")), load_file(str(b / "adapter_model.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    fresh, _ = get_family("whisper").load("random:tiny")
    load_adapter(fresh, a)  # loads into a fresh base


def test_resume_with_loader_workers_continues_the_random_draws(corpus, tmp_path) -> None:
    """The loader routes batches ahead of the step that trains on them; a checkpoint must
    still hold the random router's state after the last batch trained on."""
    steps = {"train.max_steps": 4, "train.save_every": 2}
    straight = train(config(corpus, tmp_path / "straight", "random", **steps), progress=False)
    out = tmp_path / "workers"
    cfg = config(corpus, out, "random", **steps, **{"train.num_workers": 2})
    shutil.rmtree(train(cfg, progress=False))  # leaves the checkpoint of step 2 behind
    resumed = train(cfg, resume=True, progress=False)
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["resumed"] == {"from": str(out / "checkpoint"), "step": 2} and summary["steps_run"] == 2
    wa = load_file(str(straight / "adapter_model.safetensors"))
    wb = load_file(str(resumed / "adapter_model.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_save_every_0_trains_without_checkpoints(corpus, tmp_path) -> None:
    out = tmp_path / "never"
    adapter = train(
        config(corpus, out, "threshold", **{"train.max_steps": 3, "train.save_every": 0}), progress=False
    )
    assert (adapter / "adapter_model.safetensors").is_file() and find_checkpoint(out) is None
    assert json.loads((out / "train_summary.json").read_text())["steps"] == 3


def test_eval_and_compare_commands(corpus, tmp_path, capsys) -> None:
    adapter = train(config(corpus, tmp_path / "flexi", "threshold"), progress=False)
    assert main(["eval", "--data", str(corpus), "--adapter", str(adapter), "--batch-size", "4"]) == 0
    res = json.loads((tmp_path / "flexi" / "eval_test" / "results.json").read_text())
    assert res["n"] == 6 and res["name"] == "threshold"
    assert sum(res["rank_histogram"].values()) == 6 and set(res["by_seen_voice"]) <= {"seen", "unseen"}
    # the corpus' channel column, per row: of the test rows u18-u23, u20 is telephone
    assert {k: v["n"] for k, v in res["by_channel"].items()} == {"telephone": 1, "wideband": 5}
    assert 0 <= res["active_params_mean"] <= res["adapter_params_total"]
    assert (tmp_path / "flexi" / "eval_test" / "results.md").read_text().startswith("# threshold")
    base_out = tmp_path / "base"
    assert (
        main(
            [
                "eval",
                "--data",
                str(corpus),
                "--model",
                "random:tiny",
                "--audio-ctx",
                "100",
                "--out",
                str(base_out),
                "--name",
                "base",
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert (
        main(
            ["compare", str(base_out), str(tmp_path / "flexi" / "eval_test"), "--out", str(tmp_path / "cmp")]
        )
        == 0
    )
    table = capsys.readouterr().out
    assert (
        table.splitlines()[0].startswith("| method | WER % |")
        and "| base |" in table
        and "| threshold |" in table
    )
    assert (tmp_path / "cmp" / "wer_by_snr.png").stat().st_size > 1000


def test_bad_config_key_is_one_line(corpus, tmp_path, capsys) -> None:
    conf = tmp_path / "bad.yaml"
    conf.write_text("train:\n  max_step: 3\n")
    assert main(["train", "--config", str(conf)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "unknown key 'train.max_step'" in err and "bad.yaml" in err


def test_negative_num_workers_is_a_config_error(corpus, tmp_path) -> None:
    with pytest.raises(ConfigError, match="train.num_workers"):
        train(config(corpus, tmp_path / "w", "fixed", **{"train.num_workers": -1}), progress=False)
    assert not (tmp_path / "w").exists()  # refused before anything was loaded or written


def test_cached_encoder_training(corpus, tmp_path) -> None:
    cfg = config(corpus, tmp_path / "cached", "threshold", **{"model.cache_encoder_layers": 2})
    adapter = train(cfg, progress=False)
    targets = read_adapter_config(adapter)["config"]["target_modules"]
    assert isinstance(targets, str) and "encoder" in targets  # the frozen-prefix pattern
    log = [json.loads(line) for line in (tmp_path / "cached" / "train_log.jsonl").read_text().splitlines()]
    assert len(log) == 3 and all(np.isfinite(e["loss"]) for e in log)
    names = load_file(str(adapter / "adapter_model.safetensors")).keys()
    assert names and not any(".encoder." in n for n in names)  # all encoder layers cached: decoder only


def test_regex_targets_adapt_the_decoder_only(corpus, tmp_path) -> None:
    # recipes/synthetic/conf/flexi_benefit_nscale_dec.yaml's regex: the encoder stays the base's,
    # every decoder projection (self- and cross-attention, MLP) is adapted
    regex = load_config(
        RECIPES / "synthetic" / "conf" / "flexi_benefit_nscale_dec.yaml"
    ).adapter.target_modules
    cfg = config(corpus, tmp_path / "dec", "fixed", **{"adapter.target_modules": regex})
    names = {
        n.rsplit(".", 1)[0] for n in load_file(str(train(cfg, progress=False) / "adapter_model.safetensors"))
    }
    assert names and all(".decoder.layers." in n for n in names)
    kinds = {n.split(".layers.", 1)[1].split(".", 1)[1] for n in names}
    assert kinds == {
        f"{a}.{p}" for a in ("self_attn", "encoder_attn") for p in ("q_proj", "k_proj", "v_proj", "out_proj")
    } | {"fc1", "fc2"}


def test_regex_targets_adapt_the_encoder_only(corpus, tmp_path) -> None:
    # recipes/synthetic/conf/flexi_benefit_nscale_enc.yaml's regex: the decoder stays the base's
    regex = load_config(
        RECIPES / "synthetic" / "conf" / "flexi_benefit_nscale_enc.yaml"
    ).adapter.target_modules
    cfg = config(corpus, tmp_path / "enc", "fixed", **{"adapter.target_modules": regex})
    adapter = train(cfg, progress=False)
    names = load_file(str(adapter / "adapter_model.safetensors")).keys()
    assert names and all(".encoder.layers." in n for n in names)
    assert any(".fc1." in n for n in names) and any(".self_attn.q_proj." in n for n in names)
    assert read_adapter_config(adapter)["config"]["target_modules"] == regex
    with pytest.raises(ConfigError, match="cannot be combined with model.cache_encoder_layers"):
        config(
            corpus,
            tmp_path / "x",
            "fixed",
            **{"adapter.target_modules": regex, "model.cache_encoder_layers": 2},
        )
