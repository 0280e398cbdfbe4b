"""The CPU corpus fits its 10-s window: short sentences, clips capped at 9.5 s (no TTS needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from data_prep.sentences import n_words
from data_prep.synthetic import SIZES, make_plan, render
from data_prep.tts import Voice

VOICES = {
    "espeak": [Voice("espeak", "en-us"), Voice("espeak", "en-gb"), Voice("espeak", "en-sc", unseen=True)]
}


def test_small_plans_sentences_a_10_s_window_can_hold() -> None:
    plans = make_plan("small", 0, VOICES)
    assert len(plans) == 600 and {p.max_clip_s for p in plans} == {9.5}
    assert max(n_words(p.text) for p in plans) <= 25
    assert {p.max_clip_s for p in make_plan("tiny", 0, VOICES)} == {SIZES["default"].max_clip_s} == {29.5}


def test_a_clip_too_long_for_its_size_is_spoken_faster(tmp_path: Path) -> None:
    rates = []

    def slow_voice(voice: Voice, text: str, rate: float = 1.0, pitch: float = 0.0) -> np.ndarray:
        rates.append(rate)  # 12 s at rate 1: too long for the small size's window
        return (0.1 * np.sin(np.arange(int(16000 * 12 / rate)) / 7)).astype(np.float32)

    plan = next(p for p in make_plan("small", 0, VOICES) if p.noise_type != "babble")
    row = render(plan, tmp_path, 0, slow_voice)
    assert row["duration"] <= 9.5 and len(rates) > 1


def test_plan_texts_are_the_texts_the_corpus_is_built_with() -> None:
    """Stored hypotheses can be scored without the corpus: ``plan_texts`` gives every
    validation and test utterance the text ``make_plan`` gives it, whatever the voices."""
    from data_prep.synthetic import plan_texts

    texts = plan_texts("small", 0)
    for voices in (VOICES, {"espeak": VOICES["espeak"][:1]}):
        plans = {p.id: p.text for p in make_plan("small", 0, voices) if p.split != "train"}
        assert texts == plans
    assert plan_texts("small", 1) != texts
