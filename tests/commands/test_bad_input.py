"""Every command on bad input: a non-zero exit, one stderr line naming the file or key and
the problem, no traceback. In batch jobs (signals, eval, transcribe) a bad item is
reported, skipped and counted, and the rest of the run completes.

Each test drives ``flexispeech.cli.main`` in-process with a random tiny Whisper, so the
whole file runs in seconds."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from flexispeech.cli import main
from flexispeech.data.corpus import load_corpus, write_corpus

SR = 16_000
FAST = ["--model", "random:tiny", "--audio-ctx", "150", "--max-new-tokens", "3"]


def one_error_line(capsys: pytest.CaptureFixture, *needles: str) -> str:
    """The single stderr line of a failed command; asserts it names every needle."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def tone(seconds: float, sr: int = SR, freq: float = 300.0) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (0.2 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Five test utterances: one corrupt file, one empty and one non-English reference."""
    root = tmp_path_factory.mktemp("corpus")
    (root / "audio").mkdir()
    texts = ["the quick fox", "", "ça va très bien merci", "call stella", "over the dog"]
    rows = []
    for i, text in enumerate(texts):
        path = root / "audio" / f"u{i}.wav"
        sf.write(path, tone(0.5 + 0.1 * i, freq=200 + 50 * i), SR)
        rows.append(
            {
                "id": f"u{i}",
                "audio": f"audio/u{i}.wav",
                "text": text,
                "duration": 0.5 + 0.1 * i,
                "speaker": "s",
                "split": "test",
                "voice": "v",
            }
        )
    write_corpus(rows, root, name="bad")
    (root / "audio" / "u3.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" * 4)  # corrupted after the build
    return root


# -- corpus commands --------------------------------------------------------------------


@pytest.mark.parametrize("argv", [["signals", "{d}"], ["eval", "--data", "{d}", *FAST], ["compare", "{d}"]])
def test_a_directory_that_is_not_a_corpus(tmp_path: Path, capsys, argv: list[str]) -> None:
    d = tmp_path / "not_a_corpus"
    d.mkdir()
    assert main([a.format(d=d) for a in argv]) == 2
    one_error_line(capsys, str(d))


def test_train_on_a_directory_that_is_not_a_corpus(tmp_path: Path, capsys) -> None:
    conf = tmp_path / "run.yaml"
    conf.write_text(
        f"output_dir: {tmp_path / 'out'}\nmodel:\n  source: random:tiny\ndata:\n  corpus: {tmp_path}\n"
    )
    assert main(["train", "--config", str(conf)]) == 2
    one_error_line(capsys, str(tmp_path), "not a flexispeech corpus")


@pytest.mark.parametrize("text", ["train:\n  batch_size: 2\n  batch_size: 3\n", "train:\n  no_such_key: 1\n"])
def test_train_config_with_a_duplicated_or_unknown_key(tmp_path: Path, capsys, text: str) -> None:
    conf = tmp_path / "run.yaml"
    conf.write_text(text)
    assert main(["train", "--config", str(conf)]) == 2
    one_error_line(capsys, "run.yaml", "batch_size" if "batch_size" in text else "no_such_key")


def test_train_missing_config(tmp_path: Path, capsys) -> None:
    assert main(["train", "--config", str(tmp_path / "none.yaml")]) == 2
    one_error_line(capsys, "none.yaml")


def test_signals_skips_and_counts_a_corrupt_file(corpus: Path, capsys) -> None:
    assert main(["signals", str(corpus), "--splits", "test", "--force"]) == 0
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    assert "1 utterance(s) skipped" in out
    skipped = [line for line in err.splitlines() if line.startswith("skipped:")]
    assert len(skipped) == 1 and "u3.wav" in skipped[0], err  # reported once, naming the file
    assert not any("u3.wav" in line for line in err.splitlines() if not line.startswith("skipped:")), err
    snr = load_corpus(corpus, "test")["signal_snr_db"]
    assert math.isnan(snr[3]) and all(np.isfinite(snr[i]) for i in (0, 1, 2, 4))


def test_eval_skips_a_corrupt_file_and_counts_empty_references(corpus: Path, tmp_path: Path, capsys) -> None:
    out_dir = tmp_path / "eval"
    assert main(["eval", "--data", str(corpus), *FAST, "--out", str(out_dir)]) == 0
    out, err = capsys.readouterr()
    assert "Traceback" not in err and "u3.wav" in err
    assert "1 skipped" in out and "1 with empty references" in out
    res = json.loads((out_dir / "results.json").read_text())
    assert res["n"] == 4 and res["n_skipped"] == 1 and res["skipped"][0]["id"] == "u3"
    assert "u3.wav" in res["skipped"][0]["error"]
    assert res["overall"]["n_empty_refs"] == 1 and res["overall"]["n"] == 4
    md = (out_dir / "results.md").read_text()
    assert "Skipped (1" in md and "empty normalised reference" in md


def test_eval_with_only_empty_references_does_not_crash(tmp_path: Path, capsys) -> None:
    root = tmp_path / "c"
    (root / "audio").mkdir(parents=True)
    rows = []
    for i in range(2):
        sf.write(root / "audio" / f"e{i}.wav", tone(0.4), SR)
        rows.append(
            {
                "id": f"e{i}",
                "audio": f"audio/e{i}.wav",
                "text": " " if i else "",
                "duration": 0.4,
                "speaker": "s",
                "split": "test",
            }
        )
    write_corpus(rows, root, name="empty")
    assert main(["eval", "--data", str(root), *FAST, "--out", str(tmp_path / "ev")]) == 0
    res = json.loads((tmp_path / "ev" / "results.json").read_text())
    assert res["overall"]["n_empty_refs"] == 2 and math.isnan(res["overall"]["wer"])
    assert "WER –%" in capsys.readouterr().out


def test_prepare_unknown_corpus_and_missing_source(tmp_path: Path, capsys) -> None:
    assert main(["prepare", "nosuch"]) == 2
    one_error_line(capsys, "nosuch")
    assert main(["prepare", "folder", "--src", str(tmp_path / "none"), "--out", str(tmp_path / "o")]) == 2
    one_error_line(capsys, str(tmp_path / "none"))


def test_prepare_folder_skips_and_counts_a_corrupt_file(tmp_path: Path, capsys) -> None:
    src = tmp_path / "src"
    src.mkdir()
    sf.write(src / "a.wav", tone(0.3), SR)
    (src / "b.wav").write_bytes(b"not audio at all")
    sf.write(src / "c.wav", tone(0.3, freq=500), SR)
    (src / "metadata.csv").write_text("file_name,transcription\na.wav,one\nb.wav,two\nc.wav,three\n")
    out = tmp_path / "corpus"
    assert main(["prepare", "folder", "--src", str(src), "--out", str(out)]) == 0
    info = json.loads((out / "corpus.json").read_text())
    assert sum(info["splits"].values()) == 2 and info["info"]["skipped"]["unreadable"] == 1
    assert "Traceback" not in capsys.readouterr().err


def test_compare_and_convert_on_wrong_directories(tmp_path: Path, capsys) -> None:
    assert main(["convert-ct2", str(tmp_path), str(tmp_path / "out")]) == 2
    one_error_line(capsys, "model.bin")
    assert not (tmp_path / "out").exists()
    run = tmp_path / "run"
    run.mkdir()
    assert main(["compare", str(run)]) == 2  # a directory without an evaluation in it
    one_error_line(capsys, str(run), "no results.json")
    (run / "results.json").write_text('{"name": "cut off')  # an evaluation written half-way
    assert main(["compare", str(run)]) == 2
    one_error_line(capsys, str(run / "results.json"), "not valid JSON")
    for other in ('{"steps_run": 40}', "{}", "[1, 2]"):  # JSON that eval did not write (a KeyError before)
        (run / "train_summary.json").write_text(other)
        assert main(["compare", str(run / "train_summary.json")]) == 2
        one_error_line(capsys, str(run / "train_summary.json"), "not the results of `flexispeech eval`")
    (run / "results.json").write_text(json.dumps({"name": "a", "utterances": []}))
    assert (
        main(["compare", str(run), "--out", str(run / "train_summary.json")]) == 2
    )  # a file, not a directory
    one_error_line(capsys, "--out is a file")


# -- models and devices -----------------------------------------------------------------


def test_hub_id_offline_is_one_line(assets_dir: Path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["transcribe", str(assets_dir / "fox.wav"), "--model", "someone/no-such-model"]) == 2
    one_error_line(capsys, "someone/no-such-model")


def _beyond_the_last_gpu() -> str:
    """A CUDA index this machine does not have, whatever its GPU count (cuda:0 on a CPU machine)."""
    return f"cuda:{torch.cuda.device_count()}"


@pytest.mark.parametrize("device", [_beyond_the_last_gpu(), "not-a-device"])
def test_unavailable_device_is_one_line(assets_dir: Path, capsys, device: str) -> None:
    assert main(["transcribe", str(assets_dir / "fox.wav"), *FAST, "--device", device]) == 2
    line = one_error_line(capsys, "--device", device)
    if device.startswith("cuda"):  # no CUDA at all, or an index past the last GPU
        assert (
            ("no cuda device" in line)
            if not torch.cuda.is_available()
            else (f"only {torch.cuda.device_count()} cuda device(s)" in line)
        ), line


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: --device cuda is valid")
def test_cuda_on_a_machine_without_cuda_is_one_line(assets_dir: Path, capsys) -> None:
    assert main(["transcribe", str(assets_dir / "fox.wav"), *FAST, "--device", "cuda"]) == 2
    one_error_line(capsys, "--device", "'cuda'", "no cuda device is available")


# -- audio files: transcribe and stream ---------------------------------------------------


@pytest.fixture(scope="module")
def audio_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("audio")
    files = {
        "silent": (np.zeros(SR // 2, dtype=np.float32), SR, "wav"),
        "8k": (tone(0.5, 8000), 8000, "wav"),
        "96k": (tone(0.5, 96000), 96000, "flac"),
        "6ch": (np.stack([tone(0.5, 22050, 200 + 100 * c) for c in range(6)], axis=1), 22050, "wav"),
        "nan": (np.where(np.arange(SR // 2) == 100, np.nan, tone(0.5)).astype(np.float32), SR, "wav"),
        "zero": (np.zeros(0, dtype=np.float32), SR, "wav"),
    }
    out = {}
    for name, (x, sr, ext) in files.items():
        out[name] = d / f"{name}.{ext}"
        sf.write(out[name], x, sr, subtype="FLOAT" if name == "nan" else None)
    out["truncated"] = d / "truncated.flac"
    sf.write(out["truncated"], tone(2.0), SR)
    out["truncated"].write_bytes(out["truncated"].read_bytes()[:300])
    return out


def test_transcribe_good_odd_and_bad_files(audio_files: dict[str, Path], capsys) -> None:
    names = ["silent", "8k", "nan", "96k", "zero", "6ch"]
    assert main(["transcribe", *(str(audio_files[n]) for n in names), *FAST, "--json"]) == 1
    out, err = capsys.readouterr()
    rows = [json.loads(line) for line in out.splitlines()]
    assert [Path(r["path"]).stem for r in rows] == ["silent", "8k", "96k", "6ch"]
    for r in rows:
        assert r["duration"] == pytest.approx(0.5, abs=1e-3) and all(np.isfinite(list(r["signals"].values())))
    errors = err.strip().splitlines()
    assert len(errors) == 2 and "Traceback" not in err
    assert "nan.wav" in errors[0] and "NaN" in errors[0]
    assert "zero.wav" in errors[1] and "empty" in errors[1]


@pytest.mark.parametrize(
    ("name", "problem"),
    [("missing", "no such file"), ("truncated", "truncated.flac"), ("nan", "NaN"), ("zero", "empty")],
)
def test_stream_bad_files(
    audio_files: dict[str, Path], tmp_path: Path, capsys, name: str, problem: str
) -> None:
    path = audio_files.get(name, tmp_path / "missing.wav")
    assert main(["stream", str(path), "--model", "random:tiny", "--audio-ctx", "150"]) == 2
    one_error_line(capsys, path.name, problem)


@pytest.mark.parametrize("name", ["silent", "96k", "6ch"])
def test_stream_odd_but_valid_files(audio_files: dict[str, Path], capsys, name: str) -> None:
    assert (
        main(
            [
                "stream",
                str(audio_files[name]),
                "--model",
                "random:tiny",
                "--audio-ctx",
                "150",
                "--json",
                "--chunk",
                "0.25",
            ]
        )
        == 0
    )
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert events[-1]["final"] and events[-1]["audio_s"] == pytest.approx(0.5, abs=1e-3)


# -- adapters -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved adapter (ranks 0, 2, 8) on the random tiny Whisper, trained with FAST's window."""
    from flexispeech import FlexiLoraConfig, inject, save_adapter
    from flexispeech.models.whisper import FAMILY

    model, _ = FAMILY.load("random:tiny")
    window = {
        "audio_ctx": int(FAST[FAST.index("--audio-ctx") + 1])
    }  # served at its own window: no warning line
    inject(model, FlexiLoraConfig(ranks=(0, 2, 8), target_modules=FAMILY.default_targets, metadata=window))
    return save_adapter(model, tmp_path_factory.mktemp("adapter") / "adapter")


def _copy_adapter(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_rank_outside_the_adapters_set(adapter_dir: Path, assets_dir: Path, capsys) -> None:
    assert (
        main(["transcribe", str(assets_dir / "fox.wav"), *FAST, "--adapter", str(adapter_dir), "--rank", "3"])
        == 2
    )
    one_error_line(capsys, "3")


def test_adapter_for_another_base_model_names_the_shape(
    adapter_dir: Path, assets_dir: Path, tmp_path: Path, capsys
) -> None:
    from safetensors.torch import load_file, save_file

    other = _copy_adapter(adapter_dir, tmp_path / "other")
    weights = load_file(other / "adapter_model.safetensors")
    name = sorted(k for k in weights if k.endswith("lora_A"))[0]
    weights[name] = torch_cat_columns(weights[name])  # as if the base layer were wider
    save_file(weights, other / "adapter_model.safetensors")
    assert main(["transcribe", str(assets_dir / "fox.wav"), *FAST, "--adapter", str(other)]) == 2
    line = one_error_line(capsys, str(other), "shape")
    assert str(tuple(weights[name].shape)) in line


def torch_cat_columns(a):
    return torch.cat([a, a[:, :3]], dim=1).contiguous()


def test_corrupt_adapter_weights_and_config(
    adapter_dir: Path, assets_dir: Path, tmp_path: Path, capsys
) -> None:
    bad = _copy_adapter(adapter_dir, tmp_path / "bad")
    (bad / "adapter_model.safetensors").write_bytes(b"\x00garbage")
    assert main(["transcribe", str(assets_dir / "fox.wav"), *FAST, "--adapter", str(bad)]) == 2
    one_error_line(capsys, "adapter_model.safetensors")
    (bad / "adapter_config.json").write_text("{not json")
    assert main(["eval", "--data", str(tmp_path), "--adapter", str(bad)]) == 2
    one_error_line(capsys, "adapter_config.json")
    assert main(["transcribe", str(assets_dir / "fox.wav"), *FAST, "--adapter", str(tmp_path / "none")]) == 2
    one_error_line(capsys, str(tmp_path / "none"))


@pytest.mark.parametrize(
    ("damage", "file", "words"),
    [
        (lambda c, r: c["config"].pop("ranks"), "adapter_config.json", "'ranks'"),
        (
            lambda c, r: c["config"].update(alpha="big"),
            "adapter_config.json",
            "alpha: expected a finite number",
        ),
        (
            lambda c, r: r.clear() or r.update(type="fixed", rank=3),
            "router.json",
            "saved router's rank(s) [3]",
        ),
        (lambda c, r: r.clear() or r.update(type="bogus"), "router.json", "unknown router type"),
    ],
    ids=["no-ranks", "alpha-text", "router-rank", "router-type"],
)
def test_a_damaged_adapter_or_router_file_is_named(
    adapter_dir: Path, assets_dir: Path, tmp_path: Path, capsys, damage, file: str, words: str
) -> None:
    """A config without its ranks must not load with the default ranks (it served --rank 8
    on an r16 adapter), a wrong type must not become a TypeError, and a saved router's bad
    rank must name router.json rather than read as the user's --rank."""
    bad = _copy_adapter(adapter_dir, tmp_path / "bad")
    config = json.loads((bad / "adapter_config.json").read_text())
    router = {"type": "fixed", "rank": 8}
    damage(config, router)
    (bad / "adapter_config.json").write_text(json.dumps(config))
    (bad / "router.json").write_text(json.dumps(router))
    assert main(["transcribe", str(assets_dir / "fox.wav"), *FAST, "--adapter", str(bad)]) == 2
    assert words in one_error_line(capsys, str(bad / file))


def test_a_router_file_that_is_not_an_object_is_named(
    adapter_dir: Path, assets_dir: Path, tmp_path: Path, capsys
) -> None:
    bad = _copy_adapter(adapter_dir, tmp_path / "bad")
    (bad / "router.json").write_text("[1]")
    assert main(["transcribe", str(assets_dir / "fox.wav"), *FAST, "--adapter", str(bad)]) == 2
    one_error_line(capsys, str(bad / "router.json"), "JSON object")


def test_a_misspelled_packaged_model_is_named_at_once(assets_dir: Path, capsys) -> None:
    """'whisper-tiny-en' went to the hub, which retried for minutes offline before failing
    without a hint; now one line names the packaged model it is close to."""
    assert main(["transcribe", str(assets_dir / "fox.wav"), "--model", "whisper-tiny-en"]) == 2
    one_error_line(capsys, "whisper-tiny-en", "did you mean 'whisper-tiny.en'")
