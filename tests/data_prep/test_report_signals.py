"""The signal report's WER tables: correlations and base WER by SNR bucket and engine."""

from __future__ import annotations

import math

import numpy as np
import soundfile as sf

from data_prep.report_signals import base_wer_tables, wer_table
from flexispeech.data.corpus import write_corpus


def make_corpus(root):
    (root / "audio").mkdir(parents=True)
    rows = []
    # (number words would be turned into digits by the normalizer)
    refs = ["cat dog cow hen", "oak elm ash yew", "sun moon", "red green blue"]
    hyps = ["cat dog cow hen", "oak elm ash", "sun moon moon", ""]
    for i, (ref, hyp) in enumerate(zip(refs, hyps)):
        sf.write(root / "audio" / f"{i}.wav", np.zeros(1600, np.float32), 16000)
        wer = [0.0, 0.25, 0.5, 1.0][i]
        rows.append(
            {
                "id": str(i),
                "audio": f"audio/{i}.wav",
                "text": ref,
                "duration": 0.1,
                "speaker": "s",
                "split": "train",
                "engine": "flite" if i < 2 else "espeak",
                "snr_db": [math.nan, 25.0, 7.0, 2.0][i],
                "base_hyp": hyp,
                "base_wer": wer,
                "signal_proxy": [0.1, 0.5, 0.9, 2.0][i],
            }
        )
    return write_corpus(rows, root, name="r")


def test_wer_tables(tmp_path) -> None:
    corpus = make_corpus(tmp_path / "c")
    measured = [
        {
            "duration": 0.1 * (i + 1),
            "snr_percentile": 40.0 - 10 * i,
            "snr_wada": 30.0 - i,
            "speech_activity": 0.5,
        }
        for i in range(4)
    ]
    lines = wer_table(corpus, "train", measured, "base_wer")
    table = {
        ln.split("|")[1].strip(): float(ln.split("|")[2])
        for ln in lines
        if ln.startswith("| ") and "rho" not in ln and "---" not in ln
    }
    assert table["proxy"] == 1.0 and table["snr_percentile"] == -1.0 and table["duration"] == 1.0
    assert math.isnan(table["speech_activity"])  # constant: undefined correlation
    text = "\n".join(base_wer_tables(corpus, "train"))
    assert "| clean | 1 | 0.0 | 0 |" in text and "| ≥20 dB | 1 | 25.0 | 0 |" in text
    assert "| <5 dB | 1 | 100.0 | 0 |" in text and "| 5–10 dB | 1 | 50.0 | 1 |" in text
    assert "| espeak | 2 | 80.0 | 1 |" in text and "| flite | 2 | 12.5 | 0 |" in text
