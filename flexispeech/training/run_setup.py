"""What a run builds from its config before training: the model, the adapter config, the
learning-rate schedule, the longest clip it trains on, its validation, accelerate's
precision state."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import yaml

from flexispeech.data.text import open_split
from flexispeech.errors import ConfigError
from flexispeech.evaluation.fallback import Fallback
from flexispeech.evaluation.metrics import source_normalizer
from flexispeech.lora.config import FlexiLoraConfig
from flexispeech.models.family import get_family
from flexispeech.models.family import load_model as load_family_model
from flexispeech.models.whisper import POSITIONS_PER_SECOND
from flexispeech.models.whisper_prefix import frozen_prefix_pattern
from flexispeech.training.augmented import SPEECH_FAMILIES
from flexispeech.training.checkpoint import checkpoint_step, find_checkpoint
from flexispeech.training.config import RunConfig
from flexispeech.training.early_stopping import Validator


def lr_schedule(cfg: RunConfig, optimizer: torch.optim.Optimizer) -> Any:
    """The warm-up then ``train.schedule`` learning-rate schedule of ``optimizer``."""
    from transformers import get_scheduler

    names = {"linear": "linear", "cosine": "cosine", "constant": "constant_with_warmup"}
    if cfg.train.schedule not in names:
        raise ConfigError(f"train.schedule: expected one of {sorted(names)}, got {cfg.train.schedule!r}")
    return get_scheduler(names[cfg.train.schedule], optimizer, cfg.train.warmup_steps, cfg.train.max_steps)


def load_model(cfg: RunConfig, device: str | torch.device = "cpu") -> tuple[Any, Any, Any]:
    """The run's family, base model and processor."""
    family = get_family(cfg.model.family)
    model, processor = load_family_model(family, cfg.model.source, str(device), cfg.model.audio_ctx)
    return family, model, processor


def adapter_config(cfg: RunConfig, family: Any) -> FlexiLoraConfig:
    """The FlexiLoraConfig of a run (with the facts needed to reload it in metadata)."""
    a = cfg.adapter
    targets: tuple[str, ...] | str = (
        a.target_modules
        if isinstance(a.target_modules, str)
        else tuple(a.target_modules or family.default_targets)
    )
    if cfg.model.cache_encoder_layers and not isinstance(targets, str):  # RunConfig refuses the str case
        targets = frozen_prefix_pattern(targets, cfg.model.cache_encoder_layers)
    return a.to_lora(
        target_modules=targets,
        metadata={
            "base_model": cfg.model.source,
            "family": cfg.model.family,
            "audio_ctx": cfg.model.audio_ctx,
            "run": cfg.name,
            "routing": cfg.routing.mode,
        },
    )


def max_duration(cfg: RunConfig) -> float | None:
    """``data.max_duration``, capped by a shortened Whisper window (longer clips would be cut)."""
    longest = cfg.data.max_duration
    if cfg.model.family == "whisper" and cfg.model.audio_ctx:
        window = cfg.model.audio_ctx / POSITIONS_PER_SECOND
        longest = window if longest is None else min(longest, window)
    return longest


def allow_new_precision(mixed_precision: str) -> None:
    """Let a second run in the same process train at another precision.

    accelerate keeps one process-wide state and refuses an ``Accelerator`` whose
    mixed_precision differs from the first one's (two ``train`` calls in one notebook or
    script, one in bf16). In a single process nothing else holds that state, so it is
    cleared; under a distributed launch it is left alone (the launcher set it up).
    """
    from accelerate.state import AcceleratorState, PartialState

    state = AcceleratorState._shared_state
    if state and state.get("_mixed_precision") != mixed_precision and PartialState().num_processes == 1:
        AcceleratorState._reset_state()


def build_validator(cfg: RunConfig, family: Any, processor: Any, router: Any) -> Validator | None:
    """The run's validation (``training.early_stopping``) on ``cfg.train.eval_examples`` rows
    of the eval split, each at the inference ``router``'s rank; None when
    ``train.eval_every`` is 0. With ``early_stopping.metric: wer`` the rows are also decoded
    and scored as ``flexispeech eval`` scores them."""
    if not cfg.train.eval_every:
        return None
    split = open_split(
        cfg.data.corpus,
        cfg.data.eval_split,
        max_duration(cfg),
        cfg.train.eval_examples,
        cfg.seed,
        cfg.data.target,
    )
    normalize = None
    if cfg.train.early_stopping.metric == "wer":
        if family.name not in SPEECH_FAMILIES:
            raise ConfigError(
                f"train.early_stopping.metric: wer is for speech models, not the {family.name} family"
            )
        normalize = source_normalizer(cfg.model.source)  # as eval scores it
    es = cfg.train.early_stopping
    fallback = Fallback(es.fallback_rank) if es.fallback_rank is not None else None
    return Validator(split, family, processor, router, cfg.eval.batch_size, normalize, fallback)


def resume_notes(cfg: RunConfig) -> tuple[int | None, str | None]:
    """What a ``--resume`` of ``cfg`` should be told before it starts: the step of
    ``<output_dir>/checkpoint`` when it already reaches ``train.max_steps`` (the run then
    trains nothing and keeps the checkpoint's adapter), and the ``data.corpus`` of the run
    saved in ``<output_dir>/config.yaml`` when it is another one (the checkpoint's data
    position then points into other data). None where there is nothing to say.

    Read before training, which overwrites config.yaml with this run's config."""
    out = Path(cfg.output_dir)
    ckpt = find_checkpoint(out)
    if ckpt is None:
        return None, None
    step = checkpoint_step(ckpt)
    reached = step if step >= cfg.train.max_steps else None
    return reached, _saved_corpus_if_other(out / "config.yaml", cfg.data.corpus)


def _saved_corpus_if_other(saved_config: Path, corpus: str) -> str | None:
    """The ``data.corpus`` of ``saved_config`` when it names another directory than
    ``corpus``; None when it is the same, or the file is missing or unreadable (the note is
    a courtesy: the run itself does not depend on that file)."""
    try:
        saved = yaml.safe_load(saved_config.read_text())["data"]["corpus"]
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return None
    if not isinstance(saved, str) or Path(saved).resolve() == Path(corpus).resolve():
        return None
    return saved
