"""WER and CER with jiwer, after Whisper's English text normalizer.

Scores are corpus-level (total edits over total reference words), with substitutions,
deletions and insertions reported separately: Whisper hallucinates under heavy noise, and
insertions are where that shows.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any


@lru_cache(maxsize=4)
def _normalizer(spelling_json: str | None) -> Callable[[str], str]:
    from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

    mapping = json.loads(Path(spelling_json).read_text()) if spelling_json else {}
    return EnglishTextNormalizer(mapping)


def english_normalizer(model_dir: str | Path | None = None) -> Callable[[str], str]:
    """Whisper's ``EnglishTextNormalizer`` (transformers); with the British→American
    spelling map from ``model_dir/normalizer.json`` when the checkpoint ships one."""
    spelling = Path(model_dir) / "normalizer.json" if model_dir else None
    return _normalizer(str(spelling) if spelling and spelling.is_file() else None)


def source_normalizer(source: str) -> Callable[[str], str]:
    """``english_normalizer`` of the model ``source`` (a packaged name, a folder or a hub id):
    with its checkpoint folder's spelling map where the source resolves to one."""
    from flexispeech.models.sources import pretrained_path

    model_dir = pretrained_path(source)
    return english_normalizer(model_dir if isinstance(model_dir, Path) else None)


def error_counts(
    refs: Sequence[str], hyps: Sequence[str], normalize: Callable[[str], str] | None = None
) -> dict[str, Any]:
    """Corpus-level word and character error rates of ``hyps`` against ``refs``.

    Pairs whose normalised reference is empty cannot be scored by WER; they are counted
    in ``n_empty_refs`` and left out (their hypothesis words would be pure insertions).
    """
    import jiwer

    normalize = normalize or english_normalizer()
    pairs = [(normalize(r), normalize(h)) for r, h in zip(refs, hyps, strict=True)]
    scored = [(r, h) for r, h in pairs if r.strip()]
    result: dict[str, Any] = {"n": len(refs), "n_empty_refs": len(pairs) - len(scored)}
    if not scored:
        return result | {"wer": math.nan, "cer": math.nan, "ref_words": 0, "sub": 0, "del": 0, "ins": 0}
    r, h = [p[0] for p in scored], [p[1] for p in scored]
    words = jiwer.process_words(r, h)
    chars = jiwer.process_characters(r, h)
    ref_words = words.hits + words.substitutions + words.deletions
    ref_chars = chars.hits + chars.substitutions + chars.deletions
    return result | {
        "wer": (words.substitutions + words.deletions + words.insertions) / ref_words,
        "cer": (chars.substitutions + chars.deletions + chars.insertions) / ref_chars,
        "ref_words": ref_words,
        "sub": words.substitutions,
        "del": words.deletions,
        "ins": words.insertions,
    }


def utterance_wer(ref: str, hyp: str, normalize: Callable[[str], str] | None = None) -> float | None:
    """WER of one utterance (None when its normalised reference is empty)."""
    counts = error_counts([ref], [hyp], normalize)
    return None if counts["n_empty_refs"] else counts["wer"]
