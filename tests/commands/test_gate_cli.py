"""``flexispeech gate`` end to end: embeddings cached, an adapter gated, and the evaluation of
the gated adapter serving the base model (rank 0) to the utterances unlike its training data."""

from __future__ import annotations

import json

import numpy as np
from mini_corpus import write_mini_corpus

from flexispeech.cli import main
from flexispeech.training.config import load_config
from flexispeech.training.loop import train

WINDOW = ["--audio-ctx", "100"]  # 2-s encoder window: the random tiny model stays quick


def corpus(root):
    """Quiet noise for train and validation; the test split: 4 noise clips like them and 4
    loud tones, a domain the adapter never saw."""
    rng = np.random.default_rng(0)
    clips = []
    for i in range(80):
        dur = 0.5 + 0.1 * (i % 4)
        t = np.arange(int(16000 * dur)) / 16000
        tone = i >= 76
        audio = 0.8 * np.sin(2 * np.pi * (300 + 100 * i) * t) if tone else rng.normal(0, 0.05, t.size)
        clips.append((audio, "train" if i < 48 else "validation" if i < 72 else "test", dur))
    return write_mini_corpus(root, clips)


def test_gate_serves_rank_0_to_inputs_unlike_the_training_data(tmp_path, capsys, error_line) -> None:
    data = corpus(tmp_path / "c")
    assert main(["signals", str(data), "--splits", "train,validation"]) == 0  # audio signals only
    cfg = load_config(
        None,
        [
            f"output_dir={tmp_path / 'run'}",
            "name=run",
            "model.source=random:tiny",
            f"data.corpus={data}",
            "model.audio_ctx=100",
            "train.batch_size=4",
            "train.max_steps=1",
            "train.warmup_steps=1",
            "adapter.ranks=[4]",
            "routing.mode=fixed",
        ],
    )
    adapter = train(cfg, progress=False)
    args = ["gate", str(adapter), "--data", str(data), "--out", str(tmp_path / "gated"), "--components", "4"]
    assert main(args) == 2
    error_line("gate", "no cached embedding", "flexispeech signals", "--embedding")
    assert main([*args, "--split", "test"]) == 2
    error_line("gate", "never on the test split")
    signals = ["signals", str(data), "--splits", "train,validation", "--model", "random:tiny", "--embedding"]
    assert main([*signals, *WINDOW]) == 0
    capsys.readouterr()

    assert main([*args, "--quantile", "1.0"]) == 0
    assert "0.0 % of validation" in capsys.readouterr().out  # the largest held-out score lets all through
    router = json.loads((tmp_path / "gated" / "router.json").read_text())
    assert router["type"] == "gated" and router["router"] == {"type": "fixed", "rank": 4}
    summary = json.loads((tmp_path / "gate_gated.json").read_text())
    assert summary["fit_examples"] == 48 and summary["heldout_examples"] == 24
    assert (
        json.loads((adapter / "router.json").read_text())["type"] == "fixed"
    )  # --out: the trained one is untouched

    # The test split has no cached embedding: eval computes it while decoding.
    out = tmp_path / "eval"
    assert (
        main(
            [
                "eval",
                "--adapter",
                str(tmp_path / "gated"),
                "--data",
                str(data),
                "--split",
                "test",
                "--out",
                str(out),
                "--batch-size",
                "8",
            ]
        )
        == 0
    )
    rows = json.loads((out / "results.json").read_text())["utterances"]
    ranks = {u["id"]: u["rank"] for u in rows}
    # each row keeps the scalar signals it was routed on, not the embedding (384 numbers)
    assert all("snr_db" in u["signals"] and "embedding" not in u["signals"] for u in rows)
    assert [ranks[f"u{i}"] for i in range(76, 80)] == [0, 0, 0, 0]  # the tones: the base model
    assert [ranks[f"u{i}"] for i in range(72, 76)] == [
        4,
        4,
        4,
        4,
    ]  # noise like the training data: the adapter

    # The confidence gate alone: rank 0 where the base model is surer of its transcript than
    # on the surest quarter of the validation split (its decoder entropy), rank 4 elsewhere.
    confident = ["gate", str(adapter), "--data", str(data), "--out", str(tmp_path / "sure"), "--no-novelty"]
    assert main(confident) == 2
    error_line("gate", "--no-novelty leaves no gate")
    assert main([*confident, "--confident-share", "0.25"]) == 0
    router = json.loads((tmp_path / "sure" / "router.json").read_text())
    assert router["gate"] is None and router["confident"]["signal"] == "proxy_entropy"
    threshold = router["confident"]["threshold"]
    from flexispeech.data.speech import CorpusSplit

    held = CorpusSplit(data, "validation").all_signals()["proxy_entropy"]
    # (the random model's entropy hardly varies on this noise: the share is unit-tested)
    assert float(held.min()) <= threshold <= float(held.max())
    out = tmp_path / "eval_sure"
    assert main(["eval", "--adapter", str(tmp_path / "sure"), "--data", str(data), "--out", str(out)]) == 0
    served = json.loads((out / "results.json").read_text())["utterances"]
    for u in served:  # the test split's entropy is computed while decoding, as transcribe does
        assert u["rank"] == (0 if u["signals"]["proxy_entropy"] < threshold else 4), u

    # --gate-from: another adapter of the same base model takes these gates around its own
    # router, with no corpus (the gates read base-model signals only)
    import shutil

    other = tmp_path / "other"
    shutil.copytree(adapter, other)
    (other / "router.json").write_text(json.dumps({"type": "fixed", "rank": 0}))
    assert main(["gate", str(other), "--out", str(tmp_path / "taken")]) == 2
    error_line("gate", "--data", "--gate-from")
    assert main(["gate", str(other), "--gate-from", str(adapter), "--out", str(tmp_path / "taken")]) == 2
    error_line("gate", str(adapter), "not gated")
    assert (
        main(
            [
                "gate",
                str(other),
                "--gate-from",
                str(adapter),
                "--data",
                str(tmp_path),
                "--out",
                str(tmp_path / "taken"),
            ]
        )
        == 2
    )
    error_line("gate", "--data is not used")  # was ignored without a word
    assert (
        main(["gate", str(other), "--gate-from", str(tmp_path / "gated"), "--out", str(tmp_path / "taken")])
        == 0
    )
    taken = json.loads((tmp_path / "taken" / "router.json").read_text())
    donor = json.loads((tmp_path / "gated" / "router.json").read_text())
    assert taken["router"] == {"type": "fixed", "rank": 0}  # the adapter's own router
    assert taken["gate"] == donor["gate"] and taken["confident"] == donor["confident"]
    config = json.loads((other / "adapter_config.json").read_text())
    config["config"]["metadata"]["base_model"] = "whisper-base"
    (other / "adapter_config.json").write_text(json.dumps(config))
    assert (
        main(["gate", str(other), "--gate-from", str(tmp_path / "gated"), "--out", str(tmp_path / "x")]) == 2
    )
    error_line("gate", "base model", "whisper-base")
