"""Signals computed from the audio at serving time, for inputs that have none cached.

``flexispeech signals`` caches a corpus's signals as columns once; a file given to
``flexispeech transcribe``, or a corpus evaluated before its signals were cached, gets
them here from the same functions: the blind audio signals (``signals.audio``) of every
clip, and the base model's decoder confidence (``signals.proxy``, adapter off) and its
pooled encoder embedding (``signals.embedding``, adapter off) when the router reads them.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from flexispeech.audio import SAMPLE_RATE
from flexispeech.errors import ConfigError
from flexispeech.signals.audio import audio_signals
from flexispeech.signals.embedding import EMBEDDING, pooled_embedding
from flexispeech.signals.proxy import PROXY_KEYS, first_pass_confidence


def runs_model(needed: Collection[str]) -> bool:
    """True when computing the signals ``needed`` runs the model (the proxy's first pass,
    the pooled embedding: each a pass of the base encoder over the batch)."""
    return bool(set(needed) & {*PROXY_KEYS, EMBEDDING})


def live_signals(
    audios: Sequence[np.ndarray],
    batch: dict[str, torch.Tensor],
    needed: Collection[str],
    family: str,
    model: nn.Module,
    processor: Any,
    max_new_tokens: int | None = None,
) -> dict[str, list[float]]:
    """Signals of a batch of clips, name -> one value per clip.

    Args:
        audios: 16 kHz mono float32 clips [T].
        batch: the family's decoding batch of the same clips (Whisper: ``input_features``).
        needed: the signal names a router reads; the proxy signals are computed only when
            it reads one of them (a first decoding pass of the base model).
        family: the model family's name (the proxy is Whisper's).
        model, processor: the model (with or without adapters: the proxy bypasses them).
        max_new_tokens: cap on the proxy's first pass.

    Returns:
        ``duration``, ``snr_db``, ``speech_activity`` always; ``proxy`` and
        ``proxy_entropy`` when ``needed`` names one of them; ``embedding`` (one list of
        d_model floats per clip) when ``needed`` names it.
    """
    rows = [audio_signals(a, SAMPLE_RATE) for a in audios]
    out = {k: [r[k] for r in rows] for k in rows[0]}
    if set(needed) & set(PROXY_KEYS):
        if family != "whisper":
            raise ConfigError("the router needs the proxy signal, which only Whisper models compute")
        proxy = first_pass_confidence(model, processor, batch, max_new_tokens=max_new_tokens)
        out.update({k: v.tolist() for k, v in proxy.items()})
    if EMBEDDING in needed:
        if family != "whisper":
            raise ConfigError("the router needs the encoder embedding, which only Whisper models compute")
        pooled = pooled_embedding(model, batch["input_features"], batch["num_frames"])
        out[EMBEDDING] = pooled.tolist()
    return out
