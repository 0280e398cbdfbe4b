"""A tiny random Whisper with a routed Flexi-LoRA adapter, saved and loaded as a
``Transcriber``: the streaming tests' model whose rank follows the buffer's SNR."""

from __future__ import annotations

from pathlib import Path

from flexispeech.streaming.transcriber import Transcriber


def routed_tiny_transcriber(tmp: Path, b_scale: float = 0.1) -> Transcriber:
    """Ranks (2, 8) on every default target, random adapters (``b_scale`` sets how far each
    rank moves the outputs) and a threshold router on SNR: below 20 dB an input is served at
    rank 8, else rank 2. Model in ``tmp/model``, adapter in ``tmp/adapter``."""
    from flexispeech import FlexiLoraConfig, ThresholdRouter, attach_router, inject, save_adapter
    from flexispeech.models.random_init import randomize_adapters
    from flexispeech.models.whisper import FAMILY

    model, processor = FAMILY.load("random:tiny")
    model.save_pretrained(tmp / "model")
    processor.save_pretrained(tmp / "model")
    inject(model, FlexiLoraConfig(ranks=(2, 8), target_modules=FAMILY.default_targets))
    randomize_adapters(model, b_scale=b_scale)
    # score = -snr_db: below 20 dB SNR the input is served at rank 8, else rank 2
    attach_router(model, ThresholdRouter(ranks=(2, 8), weights={"snr_db": -1.0}, thresholds=[-20.0]))
    save_adapter(model, tmp / "adapter")
    return Transcriber(str(tmp / "model"), adapter=tmp / "adapter")
