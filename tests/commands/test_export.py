"""``flexispeech export``: merged, PEFT and CTranslate2 exports of a tiny random Whisper's
adapter decode the tokens flexispeech decodes at that rank; bad input is one line.
The real tiny.en through CTranslate2 and faster-whisper on a recording is slow-marked."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from flexispeech import FlexiLoraConfig, ThresholdRouter, attach_router, inject, save_adapter, use_ranks
from flexispeech.audio import load_audio
from flexispeech.cli import main
from flexispeech.export import read_routing
from flexispeech.lora import flexi_layers
from flexispeech.models.family import Example
from flexispeech.models.random_init import randomize_adapters
from flexispeech.models.whisper import FAMILY
from flexispeech.streaming.transcriber import Transcriber

ctranslate2 = pytest.importorskip("ctranslate2")
FILES = ("fox.wav", "meeting.wav")
NEW_TOKENS = 6  # random models never stop: compare the first tokens


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(model_dir, adapter_dir): a random tiny Whisper and an adapter (ranks 0, 2, 8) whose B
    is large enough that every rank decodes other tokens; its router sends clips under
    2.75 s (fox.wav) to rank 2 and longer ones (meeting.wav) to rank 8."""
    root = tmp_path_factory.mktemp("export")
    model, processor = FAMILY.load("random:tiny")
    model.save_pretrained(root / "model")
    processor.save_pretrained(root / "model")
    inject(model, FlexiLoraConfig(ranks=(0, 2, 8), target_modules=FAMILY.default_targets))
    randomize_adapters(model, b_scale=0.5)
    attach_router(model, ThresholdRouter(ranks=(2, 8), weights={"duration": 1.0}, thresholds=[2.75]))
    save_adapter(model, root / "adapter")
    return root / "model", root / "adapter"


@pytest.fixture(scope="module")
def reference(tiny, assets_dir: Path) -> dict[int, list[list[int]]]:
    """rank -> per file, the greedy tokens after the prompt that `flexispeech transcribe
    --adapter --rank` decodes (its Transcriber's model, batch and generate)."""
    model_dir, adapter_dir = tiny
    out = {}
    tr = Transcriber(model=str(model_dir), adapter=adapter_dir)
    batch = FAMILY.collate(
        tr.processor, [Example(n, "", load_audio(assets_dir / n)) for n in FILES], train=False
    )
    for rank in (0, 2, 8):
        with use_ranks(tr.model, rank):
            ids = FAMILY.generate_ids(tr.model, batch, max_new_tokens=NEW_TOKENS)
        out[rank] = [seq[2:].tolist() for seq in ids]  # after <|startoftranscript|><|notimestamps|>
    assert out[0] != out[2] != out[8] and out[0] != out[8]  # each rank decodes its own tokens
    return out


@pytest.fixture(scope="module")
def per_rank_ct2(tiny, tmp_path_factory: pytest.TempPathFactory) -> Path:
    model_dir, adapter_dir = tiny
    out = tmp_path_factory.mktemp("per_rank") / "ct2"
    assert (
        main(["export", str(adapter_dir), str(out), "--to", "ct2", "--per-rank", "--model", str(model_dir)])
        == 0
    )
    return out


def features(model_dir: Path, assets_dir: Path):
    from transformers import WhisperFeatureExtractor

    fe = WhisperFeatureExtractor.from_pretrained(model_dir)
    audio = [load_audio(assets_dir / n) for n in FILES]
    return fe(audio, sampling_rate=16000, return_tensors="np").input_features


def ct2_tokens(
    ct2_dir: Path, model_dir: Path, assets_dir: Path, compute_type: str = "float32"
) -> list[list[int]]:
    """Greedy tokens of CTranslate2 itself on the fixtures, prompt <|startoftranscript|><|notimestamps|>."""
    config = json.loads((model_dir / "generation_config.json").read_text())
    prompt = [config["decoder_start_token_id"], config["no_timestamps_token_id"]]
    whisper = ctranslate2.models.Whisper(
        str(ct2_dir), device="cpu", compute_type=compute_type, intra_threads=1
    )
    storage = ctranslate2.StorageView.from_array(features(model_dir, assets_dir))
    # CTranslate2's max_length is not a count of new tokens: ask for more, compare the first ones.
    results = whisper.generate(storage, [prompt] * len(FILES), beam_size=1, max_length=8 * NEW_TOKENS)
    return [r.sequences_ids[0][:NEW_TOKENS] for r in results]


def test_ct2_per_rank_export_decodes_flexispeech_tokens(
    tiny, reference, per_rank_ct2: Path, assets_dir: Path
) -> None:
    model_dir, _ = tiny
    assert {p.name for p in (per_rank_ct2 / "rank-2").iterdir()} >= {
        "model.bin",
        "config.json",
        "vocabulary.json",
        "tokenizer.json",
        "preprocessor_config.json",
    }
    for rank in (0, 2, 8):
        assert ct2_tokens(per_rank_ct2 / f"rank-{rank}", model_dir, assets_dir) == reference[rank], rank


def test_routing_json_sends_each_request_to_its_rank(tiny, per_rank_ct2: Path) -> None:
    routed = read_routing(per_rank_ct2)
    assert routed.models == {r: per_rank_ct2 / f"rank-{r}" for r in (0, 2, 8)}
    assert routed.default_rank == 8
    signals = {"duration": torch.tensor([2.73, 2.83])}  # fox.wav, meeting.wav
    assert routed.paths(signals) == [per_rank_ct2 / "rank-2", per_rank_ct2 / "rank-8"]


def test_ct2_single_rank_command(tiny, reference, tmp_path: Path, assets_dir: Path, capsys) -> None:
    model_dir, adapter_dir = tiny
    out = tmp_path / "ct2"
    assert (
        main(["export", str(adapter_dir), str(out), "--to", "ct2", "--rank", "2", "--model", str(model_dir)])
        == 0
    )
    assert capsys.readouterr().out.startswith(f"{out}: ct2 (float32) at rank 2 in ")
    assert ct2_tokens(out, model_dir, assets_dir) == reference[2]
    assert not [p for p in tmp_path.iterdir() if p.name != "ct2"]  # no temporary merged model left behind


def test_merged_export_loads_without_flexispeech(tiny, reference, tmp_path: Path, assets_dir: Path) -> None:
    model_dir, adapter_dir = tiny
    out = tmp_path / "merged"
    assert (
        main(
            ["export", str(adapter_dir), str(out), "--to", "merged", "--rank", "8", "--model", str(model_dir)]
        )
        == 0
    )
    script = f"""
import json, sys
sys.modules["flexispeech"] = None  # importing flexispeech now fails: the export must not need it
import soundfile, torch
from transformers import WhisperForConditionalGeneration, WhisperProcessor
model = WhisperForConditionalGeneration.from_pretrained({str(out)!r}).eval()
processor = WhisperProcessor.from_pretrained({str(out)!r})
audio = [soundfile.read(p, dtype="float32")[0] for p in {[str(assets_dir / n) for n in FILES]!r}]
features = processor(audio, sampling_rate=16000, return_tensors="pt").input_features
with torch.no_grad():  # the random model emits timestamp tokens: one call, as flexispeech decodes
    seqs = model.generate(features, max_new_tokens={NEW_TOKENS}, return_timestamps=False, force_unique_generate_call=True)
print(json.dumps([s[2:].tolist() for s in seqs]))
"""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TRANSFORMERS_VERBOSITY": "error"}
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == reference[8]


def test_per_rank_merged_weights_are_base_plus_rank_update(tiny, tmp_path: Path) -> None:
    model_dir, adapter_dir = tiny
    out = tmp_path / "merged"
    assert (
        main(
            ["export", str(adapter_dir), str(out), "--to", "merged", "--per-rank", "--model", str(model_dir)]
        )
        == 0
    )
    base = load_file(str(model_dir / "model.safetensors"))
    tr = Transcriber(model=str(model_dir), adapter=adapter_dir)
    for rank in (0, 2, 8):
        merged = load_file(str(out / f"rank-{rank}" / "model.safetensors"))
        for name, layer in flexi_layers(tr.model):
            key = f"{name}.weight"
            expected = base[key] + layer.delta_weight(rank).detach() if rank else base[key]
            torch.testing.assert_close(merged[key], expected, rtol=0, atol=1e-6)
        assert torch.equal(merged["model.encoder.conv1.weight"], base["model.encoder.conv1.weight"])


def test_peft_export_command(tiny, tmp_path: Path) -> None:
    model_dir, adapter_dir = tiny
    out = tmp_path / "peft"
    assert (
        main(["export", str(adapter_dir), str(out), "--to", "peft", "--rank", "2", "--model", str(model_dir)])
        == 0
    )
    assert json.loads((out / "adapter_config.json").read_text())["r"] == 2
    weights = load_file(str(out / "adapter_model.safetensors"))
    assert {tuple(w.shape)[0] for k, w in weights.items() if k.endswith("lora_A.weight")} == {2}


def test_faster_whisper_loads_the_export_offline(tiny, per_rank_ct2: Path, assets_dir: Path) -> None:
    """faster-whisper reads its tokenizer and mel settings from the export (HF_HUB_OFFLINE
    is set by the test suite, so a hub fallback would fail) and decodes."""
    faster_whisper = pytest.importorskip("faster_whisper")
    model = faster_whisper.WhisperModel(
        str(per_rank_ct2 / "rank-8"), device="cpu", compute_type="float32", cpu_threads=1
    )
    assert model.feat_kwargs["feature_size"] == 80
    segments, info = model.transcribe(
        str(assets_dir / "fox.wav"),
        beam_size=1,
        temperature=0,
        without_timestamps=True,
        condition_on_previous_text=False,
        max_new_tokens=NEW_TOKENS,
        log_prob_threshold=None,
        no_speech_threshold=None,
        compression_ratio_threshold=None,
    )
    list(segments)
    assert info.duration == pytest.approx(2.73, abs=0.01)


@pytest.fixture(scope="module")
def foreign_adapter(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An adapter saved for another base model (a bare transformer layer)."""
    net = torch.nn.TransformerEncoderLayer(d_model=16, nhead=2, batch_first=True)
    inject(net, FlexiLoraConfig(ranks=(0, 2), target_modules=("linear1", "linear2")))
    return save_adapter(net, tmp_path_factory.mktemp("foreign") / "adapter")


@pytest.mark.parametrize(
    "case, args, message",
    [
        ("rank", ["--to", "ct2", "--rank", "3"], "rank(s) [3] not in the configured ranks [0, 2, 8]"),
        ("out", ["--to", "merged"], "already exists and is not empty"),
        ("under_file", ["--to", "peft"], "is not a directory"),  # was a FileExistsError traceback
        ("foreign", ["--to", "merged"], "saved for another base model?"),
        (
            "no_ct2",
            ["--to", "ct2"],
            "--to ct2 needs CTranslate2, which is not installed: pip install ctranslate2",
        ),
        ("quant", ["--to", "merged", "--quantization", "int8"], "--quantization applies to --to ct2 only"),
        ("peft_rank0", ["--to", "peft", "--rank", "0"], "rank 0 is the base model"),
        (
            "per_rank_peft",
            ["--to", "peft", "--per-rank"],
            "--per-rank exports every rank as a merged or ct2 model",
        ),
    ],
)
def test_bad_input_is_one_line(
    tiny, foreign_adapter, tmp_path, monkeypatch, capsys, case, args, message
) -> None:
    model_dir, adapter_dir = tiny
    out = tmp_path / "out"
    if case == "out":
        out.mkdir()
        (out / "keep.txt").write_text("mine")
    if case == "under_file":
        (tmp_path / "afile").write_text("mine")
        out = tmp_path / "afile" / "out"
    if case == "no_ct2":
        monkeypatch.setitem(sys.modules, "ctranslate2", None)  # import ctranslate2 now raises ImportError
    adapter = foreign_adapter if case == "foreign" else adapter_dir
    assert main(["export", str(adapter), str(out), *args, "--model", str(model_dir)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("flexispeech export: error: ") and "Traceback" not in err
    assert message in err
    if case == "out":
        assert [p.name for p in out.iterdir()] == ["keep.txt"]
    else:
        assert not out.exists()


REAL_FILES = ("fox.wav", "stella.wav", "meeting.wav", "fox_48k_stereo.flac")


@pytest.mark.slow
def test_real_tiny_en_ct2_transcribes_like_flexispeech(
    tmp_path: Path, assets_dir: Path, transcripts, capsys
) -> None:
    """Whisper tiny.en with an adapter, exported to CTranslate2 at rank 8: ctranslate2 and
    faster-whisper transcribe the recordings with flexispeech's words at that rank; the
    int8 export's WER is within 1 point of flexispeech's."""
    from flexispeech.evaluation.metrics import english_normalizer, error_counts

    model, _ = FAMILY.load("whisper-tiny.en")
    inject(
        model,
        FlexiLoraConfig(
            ranks=(0, 4, 8), target_modules=FAMILY.default_targets, metadata={"base_model": "whisper-tiny.en"}
        ),
    )
    randomize_adapters(
        model, seed=3, b_scale=0.001
    )  # keeps the words; meeting.wav becomes "doctor Smith ... 930"
    adapter = save_adapter(model, tmp_path / "adapter")
    paths = [str(assets_dir / n) for n in REAL_FILES]

    def transcribe(*args: str) -> list[str]:
        assert main(["transcribe", *paths, "--json", *args]) == 0
        return [json.loads(line)["text"] for line in capsys.readouterr().out.splitlines()]

    ours = transcribe("--adapter", str(adapter), "--rank", "8")
    assert ours != transcribe(), "the adapter should change some decoded token at rank 8"
    for quantization in ("float32", "int8"):
        assert (
            main(
                [
                    "export",
                    str(adapter),
                    str(tmp_path / quantization),
                    "--to",
                    "ct2",
                    "--quantization",
                    quantization,
                ]
            )
            == 0
        )
    capsys.readouterr()

    tr = Transcriber(adapter=adapter, rank=8)
    gen = tr.model.generation_config
    prompt = [gen.decoder_start_token_id, gen.no_timestamps_token_id]
    examples = [Example(n, "", load_audio(p)) for n, p in zip(REAL_FILES, paths)]
    batch = FAMILY.collate(tr.processor, examples, train=False)
    with use_ranks(tr.model, 8):
        want = [
            [t for t in seq.tolist()[2:] if t != gen.eos_token_id]
            for seq in FAMILY.generate_ids(tr.model, batch)
        ]
    storage = ctranslate2.StorageView.from_array(batch["input_features"].numpy())
    texts = {}
    for quantization in ("float32", "int8"):
        whisper = ctranslate2.models.Whisper(
            str(tmp_path / quantization), device="cpu", compute_type=quantization
        )
        got = [r.sequences_ids[0] for r in whisper.generate(storage, [prompt] * len(paths), beam_size=1)]
        if quantization == "float32":
            assert got == want  # token for token
        texts[quantization] = [
            tr.processor.tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in got
        ]
    assert texts["float32"] == ours

    refs = [transcripts[n] for n in REAL_FILES]
    normalize = english_normalizer()
    wer = {
        q: error_counts(refs, t, normalize)["wer"]
        for q, t in [("flexispeech", ours), ("int8", texts["int8"])]
    }
    assert abs(wer["int8"] - wer["flexispeech"]) <= 0.01, wer

    faster_whisper = pytest.importorskip("faster_whisper")
    fw = faster_whisper.WhisperModel(str(tmp_path / "float32"), device="cpu", compute_type="float32")
    segments, _ = fw.transcribe(
        paths[0], beam_size=1, temperature=0, without_timestamps=True, condition_on_previous_text=False
    )
    words = " ".join(s.text.strip() for s in segments)
    assert normalize(words) == normalize(ours[0]), (words, ours[0])
