"""What one ``flexispeech bench`` run measures: the model shape, the batch and the timing.

Its own module because both the variants (``variants``) and the timed steps (``steps``)
read it, and the variants call the steps.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from flexispeech.errors import ConfigError
from flexispeech.models.whisper import FULL_POSITIONS

MAX_LABEL_LEN = 448  # Whisper's decoder positions (max_target_positions)


@dataclass
class BenchSpec:
    """One benchmark run: a Whisper shape of ``models.SHAPES``, the batch, where and how
    it is timed (``reps`` interleaved rounds, ``warmup`` untimed steps before a variant's
    first timed one; ``rounds``)."""

    shape: str = "tiny"
    batch: int = 8
    audio_ctx: int = FULL_POSITIONS  # encoder positions (1500 = 30 s)
    label_len: int = 64
    device: str = "cpu"
    dtype: str = "bfloat16"
    warmup: int = 2
    reps: int = 5
    seed: int = 0
    profile: str | None = None  # a file to write a torch.profiler table of the Flexi step to
    only: str | None = None  # a regular expression: time only the variants whose name it finds

    def __post_init__(self) -> None:
        # Checked before any model is built: a 0 would fail deep inside the model's forward.
        for name, least in (("batch", 1), ("audio_ctx", 1), ("label_len", 2), ("reps", 1), ("warmup", 0)):
            value = getattr(self, name)
            if value < least:
                flag = "--" + name.replace("_", "-")
                raise ConfigError(f"bench {flag}: expected at least {least}, got {value}")
        if self.label_len > MAX_LABEL_LEN:  # transformers would fail in the first forward
            raise ConfigError(
                f"bench --label-len: expected at most {MAX_LABEL_LEN} (Whisper's decoder positions), "
                f"got {self.label_len}"
            )
        if self.only is not None:
            try:
                re.compile(self.only)
            except re.error as err:
                raise ConfigError(
                    f"bench --only: {self.only!r} is not a regular expression ({err})"
                ) from None
