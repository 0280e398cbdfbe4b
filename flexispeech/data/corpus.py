"""The on-disk corpus format every ``prepare_<corpus>()`` writes and every trainer reads.

A corpus is a directory::

    corpus_dir/
      corpus.json          name, rows per split, hours, columns written, info; written last = completion marker
      dataset/             a datasets.DatasetDict (save_to_disk), one Dataset per split
      audio/...            the audio files (any layout; rows point at them)

Each row has at least :data:`REQUIRED_COLUMNS`. ``audio`` is a path *relative to the corpus
directory*, so a corpus can be moved or copied as a whole. Extra columns are allowed
(``voice``, ``engine``, ``snr_db`` with NaN for clean audio, ``noise_type``,
``reverb_rt60``, ``seen_voice``, cached signals, ...).

Why ``audio`` is a plain string column and not ``datasets.Audio(decode=False)``: with
datasets 5.x, casting to ``Audio(decode=False)`` resolves the path against the current
working directory, and ``save_to_disk`` then embeds every file's bytes into the Arrow table
and keeps only the file's base name. That doubles the corpus on disk and loses the relative
layout (two ``0001.wav`` in different folders would collide). Decoding with ``Audio(decode=True)``
needs torchcodec, which we do not use. So rows keep the relative path as a string and
:func:`load_row_audio` decodes it with soundfile.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from flexispeech.atomic import dir_lock, existing_dir, replace_dir, write_text
from flexispeech.errors import FlexispeechError

REQUIRED_COLUMNS = ("id", "audio", "text", "duration", "speaker", "split")
SPLIT_ORDER = ("train", "validation", "test")  # listed first, in this order; others follow
MARKER = "corpus.json"
DATASET_DIR = "dataset"
FORMAT_VERSION = 1


def _check_row(row: Mapping[str, Any], out_dir: Path, index: int) -> None:
    missing = [c for c in REQUIRED_COLUMNS if c not in row]
    if missing:
        raise FlexispeechError(f"{out_dir}: row {index} ({row.get('id', '?')}) lacks columns {missing}")
    audio = str(row["audio"])
    if os.path.isabs(audio):
        raise FlexispeechError(
            f"{out_dir}: row {row['id']}: audio path {audio!r} is absolute; it must be relative "
            "to the corpus directory so the corpus stays relocatable"
        )
    if not (out_dir / audio).is_file():
        raise FlexispeechError(f"{out_dir / audio}: audio file of row {row['id']} does not exist")
    if not isinstance(row["split"], str) or not row["split"]:
        raise FlexispeechError(f"{out_dir}: row {row['id']}: split must be a non-empty string")


def ordered_splits(names: Iterable[str]) -> list[str]:
    """Split names in :data:`SPLIT_ORDER` first, in that order, then the others sorted."""
    names = set(names)
    return [s for s in SPLIT_ORDER if s in names] + sorted(names - set(SPLIT_ORDER))


def save_dataset_dict(dataset_dict: Any, out_dir: Path) -> None:
    """Save ``dataset_dict`` to ``out_dir/dataset``, replacing the old one atomically
    (:func:`flexispeech.atomic.replace_dir`): a kill leaves the old rows or the new ones."""
    import datasets

    datasets.disable_progress_bars()  # one bar per split per save is noise: callers show their own
    # The lock: a recipe trains on a corpus while stage 1 swaps signal columns into it.
    with replace_dir(Path(out_dir) / DATASET_DIR, lock=lambda: dir_lock(out_dir, exclusive=True)) as tmp:
        dataset_dict.save_to_disk(str(tmp))


def load_dataset_dict(directory: Path) -> Any:
    """The ``DatasetDict`` that :func:`save_dataset_dict` saved in ``directory`` (its previous
    copy when a save was killed between its two renames)."""
    import datasets

    # Shared lock while opening: never between a concurrent save's two renames. The arrow
    # files are memory-mapped once open, so a later swap (which removes them) leaves this
    # copy readable.
    with dir_lock(directory, exclusive=False):
        return datasets.load_from_disk(str(existing_dir(Path(directory) / DATASET_DIR)))


def _summary(dataset_dict: Any, name: str, info: dict | None) -> dict:
    splits, hours = {}, {}
    for split, ds in dataset_dict.items():
        splits[split] = len(ds)
        hours[split] = round(float(np.sum(ds["duration"])) / 3600.0, 4) if len(ds) else 0.0
    return {
        "name": name,
        "format_version": FORMAT_VERSION,
        "splits": splits,
        "hours": round(sum(hours.values()), 4),
        "hours_per_split": hours,
        "columns": list(next(iter(dataset_dict.values())).column_names) if splits else [],
        "info": info or {},
    }


def write_corpus(rows: Iterable[dict], out_dir: Path, *, name: str, info: dict | None = None) -> Path:
    """Write ``rows`` as a corpus in ``out_dir`` (whose audio files must already be there).

    Rows are grouped by their ``split`` value into a ``datasets.DatasetDict`` saved to
    ``out_dir/dataset``; ``out_dir/corpus.json`` is written last, atomically, and marks the
    corpus complete. Rows may carry extra columns; a column missing from some rows is None
    there.

    Returns:
        ``out_dir``.

    Raises:
        FlexispeechError: no rows, a required column is missing, an audio path is absolute
            or points at no file.
    """
    import datasets

    out_dir = Path(out_dir)
    rows = [dict(r) for r in rows]
    if not rows:
        raise FlexispeechError(f"{out_dir}: no rows to write; a corpus needs at least one utterance")
    columns: list[str] = list(REQUIRED_COLUMNS)
    for i, row in enumerate(rows):
        _check_row(row, out_dir, i)
        columns += [k for k in row if k not in columns]
    marker = out_dir / MARKER
    marker.unlink(missing_ok=True)  # a rewrite in progress must not look complete
    by_split: dict[str, list[dict]] = {}
    for row in rows:
        by_split.setdefault(row["split"], []).append({c: row.get(c) for c in columns})
    dataset_dict = datasets.DatasetDict(
        {s: datasets.Dataset.from_list(by_split[s]) for s in ordered_splits(by_split)}
    )
    save_dataset_dict(dataset_dict, out_dir)
    write_text(marker, json.dumps(_summary(dataset_dict, name, info), indent=2) + "\n")
    return out_dir


def read_marker(marker: Path, what: str, build: str) -> dict:
    """The parsed completion marker ``marker`` of a ``what`` (a corpus, a text task) built
    by ``build``; one error line when it is missing (never built, or interrupted) or broken."""
    if not marker.is_file():
        raise FlexispeechError(
            f"{marker.parent}: not a flexispeech {what} (no {marker.name}); build one with "
            f"`{build}`, or the build was interrupted: re-run it"
        )
    try:
        return json.loads(marker.read_text())
    except json.JSONDecodeError as err:
        raise FlexispeechError(f"{marker}: not valid JSON ({err})") from None


def read_corpus_info(corpus_dir: Path) -> dict:
    """The parsed ``corpus.json`` of ``corpus_dir`` (raises if it is not a corpus)."""
    return read_marker(Path(corpus_dir) / MARKER, "corpus", "flexispeech prepare NAME --out DIR")


def is_corpus(corpus_dir: Path) -> bool:
    """Whether ``corpus_dir`` holds a complete corpus (its ``corpus.json`` exists)."""
    return (Path(corpus_dir) / MARKER).is_file()


def load_corpus(corpus_dir: Path, split: str | None = None) -> Any:
    """Load the corpus in ``corpus_dir``: the whole ``DatasetDict``, or one split's ``Dataset``.

    Raises:
        FlexispeechError: ``corpus_dir`` has no ``corpus.json``, or ``split`` does not exist
            (the message lists the splits that do).
    """
    corpus_dir = Path(corpus_dir)
    read_corpus_info(corpus_dir)
    dataset_dict = load_dataset_dict(corpus_dir)
    if split is None:
        return dataset_dict
    if split not in dataset_dict:
        raise FlexispeechError(
            f"{corpus_dir}: no split {split!r}; available: {', '.join(dataset_dict.keys())}"
        )
    return dataset_dict[split]


def audio_path(corpus_dir: Path, row: Mapping[str, Any]) -> Path:
    """The absolute path of ``row``'s audio file (rows store it relative to ``corpus_dir``)."""
    return Path(corpus_dir) / str(row["audio"])


def load_row_audio(corpus_dir: Path, row: Mapping[str, Any], sample_rate: int = 16_000) -> np.ndarray:
    """Decode ``row``'s audio to mono float32 samples [T] at ``sample_rate``."""
    from flexispeech.audio import load_audio

    return load_audio(audio_path(corpus_dir, row), sample_rate=sample_rate)


def add_columns(corpus_dir: Path, split: str, columns: Mapping[str, list]) -> None:
    """Add (or replace) ``columns`` in ``split`` of the corpus, e.g. cached signals.

    Each list must have one value per row of the split, in row order. The dataset is
    rewritten beside the old one and swapped in (:func:`save_dataset_dict`), one atomic
    step: a kill leaves the previous rows or the new ones. ``corpus.json`` is not rewritten
    (rows, splits and hours are unchanged; its ``columns`` are those the corpus was written
    with).

    Raises:
        FlexispeechError: not a corpus, unknown split, a column of the wrong length, or an
            attempt to replace a required column.
    """
    corpus_dir = Path(corpus_dir)
    replace_columns(corpus_dir, load_corpus(corpus_dir), split, columns, REQUIRED_COLUMNS, "is required")


def replace_columns(
    directory: Path,
    dataset_dict: Any,
    split: str,
    columns: dict[str, Sequence],
    protected: Sequence[str],
    why_protected: str,
) -> None:
    """Add or replace ``columns`` of one split of ``dataset_dict`` (read from
    ``directory``) and swap the whole dataset in atomically; corpora and text tasks share it.
    A column in ``protected`` cannot be replaced (``why_protected`` says why, in the error)."""
    import datasets

    if split not in dataset_dict:
        raise FlexispeechError(
            f"{directory}: no split {split!r}; available: {', '.join(dataset_dict.keys())}"
        )
    ds = dataset_dict[split]
    for name, values in columns.items():
        if name in protected:
            raise FlexispeechError(f"{directory}: column {name!r} {why_protected} and cannot be replaced")
        if len(values) != len(ds):
            raise FlexispeechError(
                f"{directory}: column {name!r} has {len(values)} values, split {split!r} has {len(ds)} rows"
            )
        if name in ds.column_names:
            ds = ds.remove_columns(name)
        ds = ds.add_column(name, list(values))
    # The new split is written beside the old files (still memory-mapped) before the swap.
    new = datasets.DatasetDict({s: (ds if s == split else d) for s, d in dataset_dict.items()})
    save_dataset_dict(new, directory)


def is_clean(snr: float | None) -> bool:
    """Whether an ``snr_db`` value means 'no noise was added' (NaN or None)."""
    return snr is None or (isinstance(snr, float) and math.isnan(snr))
