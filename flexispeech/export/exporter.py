"""``export_adapter``: an adapter to a merged transformers model, a PEFT LoRA or a
CTranslate2 model, at one rank or one per rank. Bad input is caught before any loading."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from flexispeech.atomic import nearest_existing
from flexispeech.errors import ConfigError, FlexispeechError
from flexispeech.export.ct2 import QUANTIZATIONS, require_ctranslate2, write_ct2
from flexispeech.export.merged import AdaptedModel, load_adapted, write_merged
from flexispeech.export.routing import rank_dir_name, write_routing
from flexispeech.lora.inject import check_ranks, get_router
from flexispeech.lora.io import export_peft, read_lora_config
from flexispeech.models.cache import atomic_dir

TARGETS = ("merged", "peft", "ct2")


def check_out_dir(out_dir: Path) -> None:
    """OUT must not exist, or be an empty directory: an export never overwrites; and the
    nearest of its parents that exists must be a directory it can be made in."""
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise FlexispeechError(
            f"{out_dir}: already exists and is not empty (remove it or choose another OUT)"
        )
    parent = nearest_existing(out_dir.absolute().parent)
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        what = "is not a directory" if not parent.is_dir() else "is not writable"
        raise FlexispeechError(f"{out_dir}: cannot be made: {parent} {what}")


def export_adapter(
    adapter_dir: str | Path,
    out_dir: str | Path,
    to: str,
    rank: int | None = None,
    per_rank: bool = False,
    quantization: str | None = None,
    model: str | None = None,
) -> Path:
    """Export the adapter in ``adapter_dir`` into ``out_dir`` (created atomically).

    Args:
        to: ``merged`` (a transformers directory with the adapter folded in), ``peft``
            (a PEFT LoRA) or ``ct2`` (a CTranslate2 Whisper directory for faster-whisper).
        rank: the rank to export (default: the adapter's largest).
        per_rank: one model per rank of the adapter in ``rank-<r>/`` plus ``routing.json``
            (``merged`` and ``ct2``).
        quantization: CTranslate2 weight type (``ct2`` only; default float32).
        model: the base model (default: the one recorded in the adapter, else Whisper tiny.en).

    Returns ``out_dir``.
    """
    if to not in TARGETS:
        raise ConfigError(f"--to: expected one of {list(TARGETS)}, got {to!r}")
    if quantization is not None and to != "ct2":
        raise ConfigError("--quantization applies to --to ct2 only")
    quantization = quantization or "float32"
    if quantization not in QUANTIZATIONS:
        raise ConfigError(f"--quantization: expected one of {list(QUANTIZATIONS)}, got {quantization!r}")
    if per_rank and (rank is not None or to == "peft"):
        raise ConfigError(
            "--per-rank exports every rank as a merged or ct2 model: give it without --rank, and not with --to peft"
        )
    out_dir = Path(out_dir)
    check_out_dir(out_dir)
    if to == "ct2":
        require_ctranslate2()
    config = read_lora_config(adapter_dir)
    rank = config.r_max if rank is None else rank
    check_ranks(config, [rank])
    if to == "peft" and rank == 0:
        raise ConfigError("--to peft --rank 0: rank 0 is the base model; a PEFT LoRA needs rank >= 1")
    adapted = load_adapted(adapter_dir, model)
    if to == "ct2" and adapted.family.name != "whisper":
        raise ConfigError(
            f"--to ct2 exports Whisper models; this adapter is for a {adapted.family.name} model"
        )
    with atomic_dir(out_dir) as tmp:
        if per_rank:
            for r in config.ranks:
                write_one(adapted, r, tmp / rank_dir_name(r), to, quantization)
            write_routing(tmp, list(config.ranks), get_router(adapted.model), config.r_max, to)
        else:
            write_one(adapted, rank, tmp, to, quantization)
    return out_dir


def write_one(adapted: AdaptedModel, rank: int, dest: Path, to: str, quantization: str = "float32") -> Path:
    """Write the model of one rank into ``dest`` (created if missing)."""
    dest.mkdir(parents=True, exist_ok=True)
    if to == "merged":
        return write_merged(adapted, rank, dest)
    if to == "peft":
        return export_peft(adapted.model, dest, rank)
    # CTranslate2 converts from a transformers directory: the merged model, written aside.
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=f".{dest.name}.merged-") as merged:
        write_merged(adapted, rank, Path(merged))
        return write_ct2(merged, dest, quantization)
