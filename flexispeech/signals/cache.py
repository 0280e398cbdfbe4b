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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from flexispeech.data.corpus import add_columns, load_corpus, load_row_audio
from flexispeech.data.speech import SIGNAL_PREFIX, CorpusSplit, make_collate
from flexispeech.errors import AudioError
from flexispeech.evaluation.metrics import english_normalizer, utterance_wer
from flexispeech.signals.audio import audio_signals


def _skip(err: AudioError, skipped: list[str] | None) -> None:
    """Report a row whose audio cannot be decoded (one line) and remember it."""
    tqdm.write(f"skipped: {err}", file=sys.stderr)
    if skipped is not None:
        skipped.append(str(err))


AUDIO_SIGNALS = ("duration", "snr_db", "speech_activity")
MODEL_COLUMNS = (SIGNAL_PREFIX + "proxy", SIGNAL_PREFIX + "proxy_entropy", "base_hyp", "base_wer")


def cache_audio_signals(
    corpus_dir: str | Path,
    split: str,
    force: bool = False,
    progress: bool = True,
    skipped: list[str] | None = None,
) -> bool:
    """Add the audio signal columns to ``split``; returns whether anything was computed.

    A row whose audio cannot be decoded gets NaN signals and is reported on stderr (and
    appended to ``skipped``) instead of ending the run."""
    corpus_dir = Path(corpus_dir)
    ds = load_corpus(corpus_dir, split)
    columns = [SIGNAL_PREFIX + name for name in AUDIO_SIGNALS]
    if not force and all(c in ds.column_names for c in columns):
        return False
    values: dict[str, list[float]] = {c: [] for c in columns}
    for row in tqdm(ds, desc=f"audio signals {split}", unit="utt", disable=not progress):
        try:
            sig = audio_signals(load_row_audio(corpus_dir, row), 16_000)
        except AudioError as err:
            _skip(err, skipped)
            sig = {name: math.nan for name in AUDIO_SIGNALS}
        for name in AUDIO_SIGNALS:
            values[SIGNAL_PREFIX + name].append(float(sig[name]))
    add_columns(corpus_dir, split, values)
    return True


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
) -> bool:
    """Decode ``split`` once with the base Whisper ``model`` and cache the proxy signals,
    the transcripts and their WER. Rows longer than ``max_duration`` (the encoder window)
    get NaN/empty values: they are not used by a run with that window either."""
    from flexispeech.models.whisper import FAMILY
    from flexispeech.signals.proxy import first_pass

    corpus_dir = Path(corpus_dir)
    ds = load_corpus(corpus_dir, split)
    if not force and all(c in ds.column_names for c in MODEL_COLUMNS):
        return False
    split_rows = CorpusSplit(corpus_dir, split)
    keep = [i for i, r in enumerate(split_rows.rows) if max_duration is None or r["duration"] <= max_duration]
    keep.sort(key=lambda i: split_rows.rows[i]["duration"])  # similar lengths per batch: less padding
    normalize = english_normalizer(model_dir)
    collate = make_collate(FAMILY, processor, train=False)
    n = len(split_rows)
    proxy, entropy, hyps, wers = [math.nan] * n, [math.nan] * n, [""] * n, [math.nan] * n
    model.eval()
    # An undecodable row keeps NaN/empty values, like a row over max_duration.
    for idx, examples in _decode_batches(
        split_rows, keep, batch_size, f"base decode {split}", progress, skipped
    ):
        batch = collate(examples)["inputs"]
        signals, texts = first_pass(model, processor, batch)
        for j, i in enumerate(idx):
            proxy[i] = float(signals["proxy"][j])
            entropy[i] = float(signals["proxy_entropy"][j])
            hyps[i] = texts[j]
            wer = utterance_wer(split_rows.rows[i]["text"], texts[j], normalize)
            wers[i] = math.nan if wer is None else wer
    add_columns(corpus_dir, split, dict(zip(MODEL_COLUMNS, (proxy, entropy, hyps, wers))))
    return True


def _decode_batches(
    split_rows: CorpusSplit,
    keep: list[int],
    batch_size: int,
    desc: str,
    progress: bool,
    skipped: list[str] | None,
) -> Iterator[tuple[list[int], list[Any]]]:
    """``(row indices, Examples)`` of ``keep`` in batches; undecodable rows are reported and left out."""
    for start in tqdm(range(0, len(keep), batch_size), desc=desc, unit="batch", disable=not progress):
        idx, examples = [], []
        for i in keep[start : start + batch_size]:
            try:
                examples.append(split_rows[i])
                idx.append(i)
            except AudioError as err:
                _skip(err, skipped)
        if idx:
            yield idx, examples


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
) -> bool:
    """Cache ``signal_embedding``: the base Whisper encoder's output of each row, mean-pooled
    over its audio (``pooled_embedding``); rows longer than ``max_duration`` or whose audio
    cannot be decoded get none. Returns whether anything was computed."""
    from flexispeech.models.whisper import FAMILY
    from flexispeech.signals.embedding import EMBEDDING, pooled_embedding

    corpus_dir = Path(corpus_dir)
    column = SIGNAL_PREFIX + EMBEDDING
    if not force and column in load_corpus(corpus_dir, split).column_names:
        return False
    split_rows = CorpusSplit(corpus_dir, split)
    keep = [i for i, r in enumerate(split_rows.rows) if max_duration is None or r["duration"] <= max_duration]
    keep.sort(key=lambda i: split_rows.rows[i]["duration"])
    collate = make_collate(FAMILY, processor, train=False)
    values: list[list[float] | None] = [None] * len(split_rows)
    model.eval()
    for idx, examples in _decode_batches(
        split_rows, keep, batch_size, f"embedding {split}", progress, skipped
    ):
        inputs = collate(examples)["inputs"]
        pooled = pooled_embedding(model, inputs["input_features"], inputs["num_frames"])
        for j, i in enumerate(idx):
            values[i] = pooled[j].tolist()
    add_columns(corpus_dir, split, {column: values})
    return True
