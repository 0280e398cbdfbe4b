"""A corpus of a few generated clips for the command tests (importable by this name: the
tests folder holds a conftest, so pytest puts it on the path)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from flexispeech.data.corpus import write_corpus


def write_mini_corpus(
    root: Path,
    clips: Sequence[tuple[np.ndarray, str, float]],
    extra: Sequence[Mapping[str, Any]] | None = None,
) -> Path:
    """Write ``clips`` (16 kHz audio [T], split, duration) as utterances ``u0, u1, ...`` of a
    corpus in ``root``, each saying "the quick fox" by speaker "v", with ``extra[i]``'s
    columns on row ``i``; returns ``root``."""
    (root / "audio").mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (audio, split, duration) in enumerate(clips):
        sf.write(root / "audio" / f"u{i}.wav", np.asarray(audio, dtype=np.float32), 16000)
        rows.append(
            {
                "id": f"u{i}",
                "audio": f"audio/u{i}.wav",
                "text": "the quick fox",
                "duration": duration,
                "speaker": "v",
                "split": split,
                **(extra[i] if extra else {}),
            }
        )
    return write_corpus(rows, root, name="mini")
