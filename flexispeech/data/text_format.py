"""The on-disk format of text-task datasets (math word problems, reading-comprehension QA).

A text task is a directory::

    task_dir/
      task.json     name, rows per split, difficulty histogram, info; written last = marker
      dataset/      a datasets.DatasetDict (save_to_disk), one Dataset per split

Each row has :data:`TEXT_TASK_COLUMNS`: ``prompt`` is what the model reads (question with
its context), ``answer`` the gold short answer, ``solution`` a worked solution (may be
empty), ``difficulty`` an int (0 = unlabelled), ``source`` the generator or corpus name.
Extra columns are allowed (``answers``: every accepted gold answer, for SQuAD).

The generators and importers in ``data_prep`` write text tasks with :func:`write_text_task`;
the library reads them (``flexispeech.data.text``) and adds cached signal columns
(``flexispeech.signals.text_cache``). Saving works as for speech corpora
(:mod:`flexispeech.data.corpus`): the dataset is replaced atomically, the marker last.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from flexispeech.atomic import write_text

# The corpus format's dataset/ layout and its atomic save and load.
from flexispeech.data.corpus import (
    load_dataset_dict,
    ordered_splits,
    read_marker,
    replace_columns,
    save_dataset_dict,
)
from flexispeech.errors import FlexispeechError

TEXT_TASK_COLUMNS = ("id", "prompt", "answer", "solution", "difficulty", "source", "split")
MARKER = "task.json"


def is_text_task(task_dir: Path) -> bool:
    """Whether ``task_dir`` holds a complete text task (its ``task.json`` exists)."""
    return (Path(task_dir) / MARKER).is_file()


def write_text_task(rows: Iterable[dict], out_dir: Path, *, name: str, info: dict | None = None) -> Path:
    """Write ``rows`` as a text task in ``out_dir``; ``task.json`` is written last, atomically.

    Returns:
        ``out_dir``.

    Raises:
        FlexispeechError: no rows, a row lacks a column of :data:`TEXT_TASK_COLUMNS`, or two
            rows share an id.
    """
    import datasets

    out_dir = Path(out_dir)
    rows = [dict(r) for r in rows]
    if not rows:
        raise FlexispeechError(f"{out_dir}: no rows to write; a text task needs at least one example")
    columns = list(TEXT_TASK_COLUMNS)
    seen: set[str] = set()
    for i, row in enumerate(rows):
        missing = [c for c in TEXT_TASK_COLUMNS if c not in row]
        if missing:
            raise FlexispeechError(f"{out_dir}: row {i} ({row.get('id', '?')}) lacks columns {missing}")
        if row["id"] in seen:
            raise FlexispeechError(f"{out_dir}: duplicate id {row['id']!r}")
        seen.add(row["id"])
        columns += [k for k in row if k not in columns]
    out_dir.mkdir(parents=True, exist_ok=True)
    marker = out_dir / MARKER
    marker.unlink(missing_ok=True)  # a rewrite in progress must not look complete
    by_split: dict[str, list[dict]] = {}
    for row in rows:
        row["difficulty"] = int(row["difficulty"])
        by_split.setdefault(str(row["split"]), []).append({c: row.get(c) for c in columns})
    order = ordered_splits(by_split)
    dataset_dict = datasets.DatasetDict({s: datasets.Dataset.from_list(by_split[s]) for s in order})
    save_dataset_dict(dataset_dict, out_dir)  # beside the old copy, then swapped in

    summary = {
        "name": name,
        "splits": {s: len(by_split[s]) for s in order},
        "difficulty": {
            s: {str(k): v for k, v in sorted(Counter(r["difficulty"] for r in by_split[s]).items())}
            for s in order
        },
        "columns": columns,
        "info": info or {},
    }
    write_text(marker, json.dumps(summary, indent=2) + "\n")
    return out_dir


def read_text_task_info(task_dir: Path) -> dict:
    """The parsed ``task.json`` of ``task_dir`` (raises if it is not a complete text task)."""
    return read_marker(Path(task_dir) / MARKER, "text task", "flexispeech prepare math|qa --out DIR")


def load_text_task(task_dir: Path, split: str | None = None) -> Any:
    """Load the text task in ``task_dir``: the whole ``DatasetDict``, or one split's ``Dataset``.

    Raises:
        FlexispeechError: no ``task.json``, or ``split`` does not exist (lists those that do).
    """
    task_dir = Path(task_dir)
    read_text_task_info(task_dir)
    dataset_dict = load_dataset_dict(task_dir)
    if split is None:
        return dataset_dict
    if split not in dataset_dict:
        raise FlexispeechError(f"{task_dir}: no split {split!r}; available: {', '.join(dataset_dict)}")
    return dataset_dict[split]


def add_task_columns(task_dir: Path, split: str, columns: dict[str, list]) -> None:
    """Add (or replace) ``columns`` in ``split`` of a text task, e.g. cached signals.

    Each list has one value per row of the split, in row order. As for corpora, the
    dataset is rewritten beside the old one and swapped in, one atomic step; ``task.json``
    is not rewritten (its ``columns`` are those the task was written with).

    Raises:
        FlexispeechError: not a text task, unknown split, a column of the wrong length, or
            an attempt to replace one of :data:`TEXT_TASK_COLUMNS`.
    """
    task_dir = Path(task_dir)
    replace_columns(
        task_dir, load_text_task(task_dir), split, columns, TEXT_TASK_COLUMNS, "is part of the format"
    )
