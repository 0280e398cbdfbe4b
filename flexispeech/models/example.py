"""The item a batch is made of: what the data layer hands to a model family.

Its own module, below ``family`` (the protocol) and the families (``whisper``,
``wav2vec2``, ``causal_lm``), which all need it while ``family`` loads the families.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Example:
    """One item of a batch, as the data layer hands it to a family.

    ``audio`` is 16 kHz mono float32 [T] for speech families (None for text); ``text`` is
    the reference transcript (speech) or the answer (text tasks); ``prompt`` is the
    question with its context (text tasks only); ``signals`` are its complexity signals.
    """

    id: str
    text: str
    audio: np.ndarray | None = None
    prompt: str | None = None
    signals: dict[str, float] = field(default_factory=dict)
