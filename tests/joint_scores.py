"""The joint pick's scores recomputed one utterance at a time, independently of the batch
that ``eval`` and ``transcribe`` scored it in: what their tests compare the stored scores with."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from flexispeech.lora.ranks import use_ranks
from flexispeech.models.example import Example
from flexispeech.models.whisper import FAMILY


def rescored(
    model: Any, processor: Any, audio: np.ndarray, hyps: dict[str, str], ranks: Sequence[int]
) -> torch.Tensor:
    """[C, K]: ``label_logprob`` of each rank's hypothesis ``hyps[str(c)]`` (c in ``ranks``)
    scored by the Whisper ``model`` at each rank k of ``ranks``, the clip ``audio`` alone."""
    batch = FAMILY.collate(processor, [Example(id="u", text="", audio=audio)], train=False)
    labels = [FAMILY.labels(processor, [hyps[str(c)]]) for c in ranks]
    out = torch.empty(len(ranks), len(ranks))
    for j, k in enumerate(ranks):
        with use_ranks(model, [k]):
            out[:, j] = FAMILY.label_logprob(model, batch, labels)[:, 0]
    return out


def stored_scores(note: dict[str, Any], ranks: Sequence[int]) -> torch.Tensor:
    """[C, K]: the scores a joint-pick note recorded, in the order of ``rescored``."""
    return torch.tensor([[note["scores"][str(c)][str(k)] for k in ranks] for c in ranks])


def counted_encoder_rows(monkeypatch: Any) -> list[int]:
    """Make every Whisper encoder pass append its batch size to the returned list (the
    passes ``models.encoder_reuse`` serves from its cache run no encoder and add nothing)."""
    from transformers.models.whisper import modeling_whisper

    rows: list[int] = []
    forward = modeling_whisper.WhisperEncoder.forward

    def counted(self: Any, input_features: Any = None, *args: Any, **kwargs: Any) -> Any:
        rows.append(int(input_features.shape[0]))
        return forward(self, input_features, *args, **kwargs)

    monkeypatch.setattr(modeling_whisper.WhisperEncoder, "forward", counted)
    return rows


def spied_weights(monkeypatch: Any, module: Any) -> list[Any]:
    """Make ``module.decode_joint`` (as eval's or transcribe's code calls it) append the
    weights it is given to the returned list, one entry per call."""
    seen: list[Any] = []
    pick_rows = module.decode_joint

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen.append(args[6])
        return pick_rows(*args, **kwargs)

    monkeypatch.setattr(module, "decode_joint", spy)
    return seen
