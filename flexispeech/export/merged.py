"""A base model with an adapter folded in at one rank, saved as a plain transformers directory.

The result is what ``from_pretrained`` loads with no flexispeech installed: the adapted
``nn.Linear`` weights become ``W + scale(r) · B[:, :r] A[:r]`` (``flexispeech.merge``), and
the processor, generation config and ``preprocessor_config.json`` travel with it.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from flexispeech.errors import ConfigError, FlexispeechError
from flexispeech.lora.inject import merge
from flexispeech.lora.io import load_adapter, read_adapter_config
from flexispeech.models.family import ModelFamily, check_device, get_family

DEFAULT_MODEL = "whisper-tiny.en"


@dataclass
class AdaptedModel:
    """A base model with a loaded adapter, and what an export needs to know about it."""

    family: ModelFamily
    model: nn.Module
    processor: Any
    source: str
    """The base model's name or directory, as ``family.load`` took it."""


def base_source(adapter_dir: str | Path, model: str | None = None) -> str:
    """The base model of an adapter: ``model`` when given, else the ``base_model`` saved in
    its metadata (training and ``from_peft`` record it), else Whisper tiny.en."""
    meta = read_adapter_config(adapter_dir)["config"].get("metadata") or {}
    return model or meta.get("base_model") or DEFAULT_MODEL


def load_adapted(
    adapter_dir: str | Path, model: str | None = None, family: str | None = None, device: str = "cpu"
) -> AdaptedModel:
    """Load the base model (see ``base_source``) with its full encoder window and the adapter.

    An adapter saved for another base model raises a ``FlexispeechError`` naming the first
    layer whose shape differs (``load_adapter``'s check).
    """
    from flexispeech.streaming.transcriber import detect_family

    source = base_source(adapter_dir, model)
    meta = read_adapter_config(adapter_dir)["config"].get("metadata") or {}
    check_device(device)
    fam = get_family(family or meta.get("family") or detect_family(source))
    base, processor = fam.load(source, device=device)
    try:
        load_adapter(base, adapter_dir)
    except ConfigError as err:  # no layer of the model matches the adapter's targets
        raise FlexispeechError(
            f"{adapter_dir}: saved for another base model? It does not fit {source!r}: {err}"
        ) from None
    return AdaptedModel(fam, base, processor, source)


def write_merged(adapted: AdaptedModel, rank: int, out_dir: str | Path) -> Path:
    """Save ``adapted`` merged at ``rank`` into the existing directory ``out_dir``.

    The adapter in ``adapted.model`` stays as it is (a copy is merged), so one loaded model
    serves every rank of a ``--per-rank`` export. Returns ``out_dir``.
    """
    out_dir = Path(out_dir)
    merged = merge(copy.deepcopy(adapted.model), rank).cpu()
    merged.save_pretrained(out_dir)
    adapted.processor.save_pretrained(out_dir)
    features = getattr(adapted.processor, "feature_extractor", None)
    if features is not None:
        # transformers 5 folds the feature extractor into processor_config.json; older
        # transformers, faster-whisper and CTranslate2's converter read preprocessor_config.json.
        features.save_pretrained(out_dir)
    return out_dir
