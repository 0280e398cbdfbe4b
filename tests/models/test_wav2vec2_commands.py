"""The Wav2Vec2 (CTC) family through the command line: ``train`` an adapter on a tiny
corpus, ``eval`` it (its router, a fixed rank, rank 0 against the base model) and
``transcribe`` with it, all on the random tiny Wav2Vec2."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from flexispeech.cli import main
from flexispeech.data.corpus import write_corpus
from flexispeech.lora.io import read_adapter_config

SR = 16_000
TEXTS = ["CALL STELLA", "THE QUICK FOX", "OVER THE DOG", "ASK HER"]
CTC_CHARS = set("ABCDEFGHIJKLMNOPQRSTUVWXYZ' ")  # what the character vocabulary writes (and <unk>)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 utterances (8 train, 4 test): noisy tones of 0.4-1.0 s with signal columns."""
    root = tmp_path_factory.mktemp("w2v_corpus")
    (root / "audio").mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for i in range(12):
        dur = 0.4 + 0.1 * (i % 7)
        snr = float(rng.uniform(0, 30))
        t = np.arange(int(dur * SR)) / SR
        audio = 0.2 * np.sin(2 * np.pi * (150 + 40 * i) * t) + rng.normal(0, 0.2 * 10 ** (-snr / 20), t.size)
        sf.write(root / "audio" / f"u{i}.wav", audio.astype(np.float32), SR)
        rows.append(
            {
                "id": f"u{i}",
                "audio": f"audio/u{i}.wav",
                "text": TEXTS[i % 4].lower(),
                "duration": dur,
                "speaker": f"v{i % 2}",
                "split": "test" if i >= 8 else "train",
                "voice": f"v{i % 2}",
                "signal_duration": dur,
                "signal_snr_db": snr,
            }
        )
    return write_corpus(rows, root, name="w2v")


@pytest.fixture(scope="module")
def trained(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``flexispeech train`` of a threshold-routed adapter (ranks 0, 2, 4) on the tiny Wav2Vec2."""
    out = tmp_path_factory.mktemp("w2v_run")
    assert (
        main(
            [
                "train",
                "--no-progress",
                f"output_dir={out}",
                "name=w2v",
                "model.family=wav2vec2",
                "model.source=random:tiny",
                f"data.corpus={corpus}",
                "train.batch_size=4",
                "train.max_steps=3",
                "train.warmup_steps=1",
                "train.log_every=1",
                "train.lr=1e-2",
                "adapter.ranks=[0, 2, 4]",
                "routing.mode=threshold",
                "routing.weights={snr_db: -1.0, duration: 1.0}",
                "routing.features=[snr_db, duration]",
            ]
        )
        == 0
    )
    return out


def test_train_writes_a_wav2vec2_adapter_that_learned(trained: Path) -> None:
    from safetensors.torch import load_file

    adapter = trained / "adapter"
    meta = read_adapter_config(adapter)["config"]["metadata"]
    assert (
        meta["family"] == "wav2vec2"
        and meta["base_model"] == "random:tiny"
        and meta["routing"] == "threshold"
    )
    weights = load_file(str(adapter / "adapter_model.safetensors"))
    assert weights and all(
        k.startswith("wav2vec2.encoder.layers.") for k in weights
    )  # the CTC encoder's layers
    assert any(
        k.endswith("lora_B") and bool(v.abs().sum() > 0) for k, v in weights.items()
    )  # B moved off zero
    log = [json.loads(line) for line in (trained / "train_log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log] == [1, 2, 3] and all(np.isfinite(e["loss"]) for e in log)
    summary = json.loads((trained / "train_summary.json").read_text())
    assert summary["examples_seen"] == 12 and len(summary["train_rank_histogram"]) > 1  # routed, not one rank


def eval_run(corpus: Path, out: Path, *options: str) -> dict:
    assert main(["eval", "--data", str(corpus), "--out", str(out), *options]) == 0
    return json.loads((out / "results.json").read_text())


def test_eval_routes_and_rank_zero_is_the_base_model(corpus: Path, trained: Path, tmp_path: Path) -> None:
    adapter = str(trained / "adapter")
    routed = eval_run(corpus, tmp_path / "routed", "--adapter", adapter)  # family and model from the adapter
    assert (
        routed["model"] == "random:tiny" and routed["n"] == 4 and sum(routed["rank_histogram"].values()) == 4
    )
    assert all(set(u["hyp"].replace("<unk>", "")) <= CTC_CHARS for u in routed["utterances"])  # not BPE text
    at_0 = eval_run(corpus, tmp_path / "r0", "--adapter", adapter, "--rank", "0")
    base = eval_run(corpus, tmp_path / "base", "--model", "random:tiny", "--family", "wav2vec2")
    assert [u["rank"] for u in at_0["utterances"]] == [0] * 4 and [u["rank"] for u in base["utterances"]] == [
        None
    ] * 4
    assert [u["hyp"] for u in at_0["utterances"]] == [u["hyp"] for u in base["utterances"]]
    assert any(u["hyp"] for u in base["utterances"])  # the comparison is of real text


def test_transcribe_with_the_adapter_matches_eval(
    corpus: Path, trained: Path, tmp_path: Path, capsys
) -> None:
    adapter = str(trained / "adapter")
    evaluated = eval_run(corpus, tmp_path / "r4", "--adapter", adapter, "--rank", "4")
    files = [str(corpus / "audio" / f"u{i}.wav") for i in range(8, 12)]
    capsys.readouterr()
    assert (
        main(
            [
                "transcribe",
                *files,
                "--model",
                "random:tiny",
                "--family",
                "wav2vec2",
                "--adapter",
                adapter,
                "--rank",
                "4",
                "--json",
            ]
        )
        == 0
    )
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [Path(r["path"]).name for r in rows] == [Path(f).name for f in files]
    assert all(r["rank"] == 4 for r in rows)
    by_id = {u["id"]: u["hyp"] for u in evaluated["utterances"]}
    # One model, one decoding: the same text as eval (which caught adapter dropout left in
    # training mode in transcribe: random, batch-dependent transcripts).
    assert [r["text"] for r in rows] == [by_id[f"u{i}"] for i in range(8, 12)]
