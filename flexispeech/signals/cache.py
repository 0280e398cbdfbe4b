"""Compute complexity signals for a corpus split once and cache them as columns.

Columns written (``flexispeech.data.speech`` reads ``signal_*`` back as router signals):

* ``signal_duration``, ``signal_snr_db``, ``signal_speech_activity``: blind audio signals
  (``flexispeech.signals.audio``), no model needed;
* with a base model: ``signal_proxy``, ``signal_proxy_entropy`` (first-pass confidence,
  ``flexispeech.signals.proxy``), and from the same decoding pass ``base_hyp`` and
  ``base_wer`` (the base model's per-utterance error: the learned router's difficulty
  label and the data for the signal/WER correlation table).

* on request: ``signal_embedding``, the base encoder's output mean-pooled over the
  utterance (a vector of d_model floats, ``flexispeech.signals.embedding``).

A column already present is not recomputed unless ``force``: signals are never computed
twice for the same corpus.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from flexispeech.audio import SAMPLE_RATE
from flexispeech.data.corpus import add_columns, load_corpus
from flexispeech.data.loading import Loaded, load_batches
from flexispeech.data.speech import SIGNAL_PREFIX, CorpusSplit
from flexispeech.errors import AudioError
from flexispeech.evaluation.metrics import english_normalizer, utterance_wer
from flexispeech.models.decode_features import DecodeFeatures, decode_features
from flexispeech.models.example import Example
from flexispeech.signals.audio import audio_signals


def _skip(err: AudioError, skipped: list[str] | None) -> None:
    """Report a row whose audio cannot be decoded (one line) and remember it."""
    tqdm.write(f"skipped: {err}", file=sys.stderr)
    if skipped is not None:
        skipped.append(str(err))


AUDIO_SIGNALS = ("duration", "snr_db", "speech_activity")
AUDIO_BATCH = 32  # clips per loader item for the audio signals
MODEL_COLUMNS = (SIGNAL_PREFIX + "proxy", SIGNAL_PREFIX + "proxy_entropy", "base_hyp", "base_wer")


def cache_audio_signals(
    corpus_dir: str | Path,
    split: str,
    force: bool = False,
    progress: bool = True,
    skipped: list[str] | None = None,
    num_workers: int = 0,
) -> bool:
    """Add the audio signal columns to ``split``; returns whether anything was computed.

    ``num_workers`` processes read the clips and compute their signals (0: this process).
    A row whose audio cannot be decoded gets NaN signals and is reported on stderr (and
    appended to ``skipped``) instead of ending the run."""
    corpus_dir = Path(corpus_dir)
    columns = [SIGNAL_PREFIX + name for name in AUDIO_SIGNALS]
    if not force and all(c in load_corpus(corpus_dir, split).column_names for c in columns):
        return False
    split_rows = CorpusSplit(corpus_dir, split)
    values: dict[str, list[float]] = {c: [math.nan] * len(split_rows) for c in columns}
    for loaded in _batches(
        split_rows,
        list(range(len(split_rows))),
        AUDIO_BATCH,
        _audio_signal_rows,
        num_workers,
        f"audio signals {split}",
        progress,
        skipped,
    ):
        for i, sig in zip(loaded.rows, loaded.inputs or []):
            for name in AUDIO_SIGNALS:
                values[SIGNAL_PREFIX + name][i] = float(sig[name])
    add_columns(corpus_dir, split, values)
    return True


def _audio_signal_rows(examples: list[Example]) -> list[dict[str, float]]:
    """The blind audio signals of each Example (runs in the loader's workers)."""
    return [audio_signals(ex.audio, SAMPLE_RATE) for ex in examples]


def cache_model_signals(
    corpus_dir: str | Path,
    split: str,
    model: torch.nn.Module,
    processor: Any,
    model_dir: Path | None = None,
    batch_size: int = 16,
    max_duration: float | None = None,
    force: bool = False,
    progress: bool = True,
    skipped: list[str] | None = None,
    num_workers: int = 0,
    embedding: bool = False,
) -> set[str]:
    """Decode ``split`` once with the base Whisper ``model`` and cache the proxy signals,
    the transcripts and their WER. Rows longer than ``max_duration`` (the encoder window)
    get NaN/empty values: they are not used by a run with that window either.

    With ``embedding``, ``signal_embedding`` (``cache_embedding``) is made from the same
    batches when it is missing too: reading and featurising the clips, not the encoder
    pass, is what a separate pass costs (on the GPU study's 28,000 utterances, 130 s).

    Returns what was computed: ``{"proxy"}``, ``{"proxy", "embedding"}`` or nothing (cached).
    """
    from flexispeech.signals.embedding import EMBEDDING, pooled_embedding
    from flexispeech.signals.proxy import first_pass

    corpus_dir = Path(corpus_dir)
    ds = load_corpus(corpus_dir, split)
    if not force and all(c in ds.column_names for c in MODEL_COLUMNS):
        return set()
    with_embedding = embedding and (force or _embedding_missing(ds, model, split))
    split_rows = CorpusSplit(corpus_dir, split)
    keep = _rows_within(split_rows, max_duration)
    normalize = english_normalizer(model_dir)
    n = len(split_rows)
    proxy, entropy, hyps, wers = [math.nan] * n, [math.nan] * n, [""] * n, [math.nan] * n
    pooled_rows: list[list[float] | None] = [None] * n
    model.eval()
    device = next(model.parameters()).device
    features = _features(processor, device)
    # An undecodable row keeps NaN/empty values, like a row over max_duration.
    for loaded in _batches(
        split_rows,
        keep,
        batch_size,
        features.collate,
        num_workers,
        f"base decode {split}",
        progress,
        skipped,
        lambda inputs: features.finish(inputs, device),
    ):
        signals, texts = first_pass(model, processor, loaded.inputs)
        for j, i in enumerate(loaded.rows):
            proxy[i] = float(signals["proxy"][j])
            entropy[i] = float(signals["proxy_entropy"][j])
            hyps[i] = texts[j]
            wer = utterance_wer(split_rows.rows[i]["text"], texts[j], normalize)
            wers[i] = math.nan if wer is None else wer
        if with_embedding:
            inputs = loaded.inputs
            pooled = pooled_embedding(model, inputs["input_features"], inputs["num_frames"])
            for j, i in enumerate(loaded.rows):
                pooled_rows[i] = pooled[j].tolist()
    columns: dict[str, list[Any]] = dict(zip(MODEL_COLUMNS, (proxy, entropy, hyps, wers)))
    if with_embedding:
        columns[SIGNAL_PREFIX + EMBEDDING] = pooled_rows
    add_columns(corpus_dir, split, columns)
    return {"proxy", "embedding"} if with_embedding else {"proxy"}


def _features(processor: Any, device: torch.device) -> DecodeFeatures:
    """Whisper's decoding inputs of a batch of Examples (``models.decode_features``: on a
    GPU the workers only read the clips and the log-mel is made on the model's device)."""
    from flexispeech.models.whisper import FAMILY

    return decode_features(FAMILY, processor, device)


def _rows_within(split_rows: CorpusSplit, max_duration: float | None) -> list[int]:
    """Indices of the rows no longer than ``max_duration`` (the encoder window), shortest
    first: batches of similar length carry less padding."""
    rows = split_rows.rows
    keep = [i for i, r in enumerate(rows) if max_duration is None or r["duration"] <= max_duration]
    return sorted(keep, key=lambda i: rows[i]["duration"])


def _batches(
    split_rows: CorpusSplit,
    keep: list[int],
    batch_size: int,
    collate: Callable[[list[Example]], Any],
    num_workers: int,
    desc: str,
    progress: bool,
    skipped: list[str] | None,
    finish: Callable[[Any], Any] | None = None,
) -> Iterator[Loaded]:
    """The loaded batches of ``keep`` (``data.loading``) that hold a row, their inputs passed
    through ``finish`` where given (``DecodeFeatures.finish``: the log-mel on the model's
    device); undecodable rows are reported (and appended to ``skipped``) and left out."""
    total = math.ceil(len(keep) / batch_size)
    loaded_batches = load_batches(split_rows, keep, batch_size, collate, num_workers)
    for loaded in tqdm(loaded_batches, total=total, desc=desc, unit="batch", disable=not progress):
        for _, err in loaded.errors:
            _skip(err, skipped)
        if loaded.rows:
            yield loaded if finish is None else replace(loaded, inputs=finish(loaded.inputs))


def _embedding_missing(ds: Any, model: torch.nn.Module, split: str) -> bool:
    """Whether ``split`` (a ``Dataset``) lacks ``model``'s embedding: no column, or one of
    another width, cached by another model's encoder (tiny.en's 384 values where whisper-base
    gives 512: a novelty gate fit on them would read another encoder, and fail on live ones).
    """
    from flexispeech.signals.embedding import EMBEDDING

    column = SIGNAL_PREFIX + EMBEDDING
    if column not in ds.column_names:
        return True
    width = next((len(v) for v in ds.select_columns([column])[column] if v is not None), None)
    want = int(model.config.d_model)
    if width is None or width == want:
        return False
    tqdm.write(
        f"{split}: the cached {column} has {width} values per row, this model's encoder {want}: "
        "cached by another model, made again",
        file=sys.stderr,
    )
    return True


def cache_embedding(
    corpus_dir: str | Path,
    split: str,
    model: torch.nn.Module,
    processor: Any,
    batch_size: int = 16,
    max_duration: float | None = None,
    force: bool = False,
    progress: bool = True,
    skipped: list[str] | None = None,
    num_workers: int = 0,
) -> bool:
    """Cache ``signal_embedding``: the base Whisper encoder's output of each row, mean-pooled
    over its audio (``pooled_embedding``); rows longer than ``max_duration`` or whose audio
    cannot be decoded get none. Returns whether anything was computed."""
    from flexispeech.signals.embedding import EMBEDDING, pooled_embedding

    corpus_dir = Path(corpus_dir)
    column = SIGNAL_PREFIX + EMBEDDING
    if not force and not _embedding_missing(load_corpus(corpus_dir, split), model, split):
        return False
    split_rows = CorpusSplit(corpus_dir, split)
    keep = _rows_within(split_rows, max_duration)
    values: list[list[float] | None] = [None] * len(split_rows)
    model.eval()
    device = next(model.parameters()).device
    features = _features(processor, device)
    for loaded in _batches(
        split_rows,
        keep,
        batch_size,
        features.collate,
        num_workers,
        f"embedding {split}",
        progress,
        skipped,
        lambda inputs: features.finish(inputs, device),
    ):
        inputs = loaded.inputs
        pooled = pooled_embedding(model, inputs["input_features"], inputs["num_frames"])
        for j, i in enumerate(loaded.rows):
            values[i] = pooled[j].tolist()
    add_columns(corpus_dir, split, {column: values})
    return True
