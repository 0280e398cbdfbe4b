"""Text tasks (math word problems, short-answer QA) as splits of the shared ``Split`` base.

Training and evaluation take a split from :func:`open_split`, which reads the directory's
marker: ``corpus.json`` -> :class:`~flexispeech.data.speech.CorpusSplit` (speech),
``task.json`` -> :class:`TextTaskSplit`. Both are :class:`~flexispeech.data.split.Split`s:
``rows``, ``durations`` (the lengths the batch sampler buckets by), ``signals(i)``,
``signals_of(indices)``, ``all_signals()``, ``column(name)``, ``record(i)`` and ``Example``
items, so the training loop, the routers and the decoder loop are the same code for
speech and text.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flexispeech.data.speech import CorpusSplit
from flexispeech.data.split import Split, sample_rows
from flexispeech.errors import ConfigError
from flexispeech.models.family import Example

TARGETS = ("answer", "solution")
# How a task's predictions are scored: the final number (math) or SQuAD EM/F1 (QA).
TASK_METRICS = {"math": "accuracy", "gsm8k": "accuracy", "qa": "f1", "squad": "f1"}


def task_metric(name: str, columns: list[str]) -> str:
    """``accuracy`` (final-number match) or ``f1`` (EM/F1) for a task called ``name``;
    unknown tasks with an ``answers`` column (several accepted spans) score as QA."""
    return TASK_METRICS.get(name, "f1" if "answers" in columns else "accuracy")


class TextTaskSplit(Split):
    """One split of a text task as ``Example(id, text=<target>, prompt=<prompt>, signals)``.

    Args:
        task_dir: a text task written by ``flexispeech prepare math|qa|gsm8k|squad``.
        split: which split.
        max_examples: keep N rows after a seeded shuffle, in their original order (None keeps all).
        seed: the shuffle's seed.
        target: what the model is trained to write: ``answer`` (the short gold answer) or
            ``solution`` (the worked solution, e.g. math steps ending in ``#### N``; rows
            with an empty solution fall back to the answer).
    """

    def __init__(
        self,
        task_dir: str | Path,
        split: str,
        max_examples: int | None = None,
        seed: int = 0,
        target: str = "answer",
    ) -> None:
        from flexispeech.data.text_format import load_text_task, read_text_task_info

        if target not in TARGETS:
            raise ConfigError(f"data.target: expected one of {list(TARGETS)}, got {target!r}")
        task_dir = Path(task_dir)
        self.task_name = str(read_text_task_info(task_dir).get("name", ""))
        ds = load_text_task(task_dir, split)
        self.metric = task_metric(self.task_name, ds.column_names)
        self.target = target
        super().__init__(
            task_dir,
            sample_rows(ds.to_list(), max_examples, seed),
            ds.column_names,
            f"split {split!r} has no rows",
        )

    @property
    def durations(self) -> list[float]:
        """Prompt lengths in words: what the length-bucketing sampler sorts by (the
        speech splits' seconds play the same part)."""
        return [float(len(str(r["prompt"]).split())) for r in self.rows]

    def target_text(self, index: int) -> str:
        """The text row ``index`` is trained to produce (see ``target``)."""
        row = self.rows[index]
        if self.target == "solution" and str(row.get("solution") or "").strip():
            return str(row["solution"])
        return str(row["answer"])

    def golds(self, index: int) -> list[str]:
        """Every accepted gold answer of row ``index`` (SQuAD lists several)."""
        row = self.rows[index]
        answers = row.get("answers")
        return [str(a) for a in answers] if answers else [str(row["answer"])]

    def record(self, index: int) -> dict[str, Any]:
        """What an evaluation keeps about row ``index`` besides the prediction."""
        row = self.rows[index]
        return {
            "id": str(row["id"]),
            "ref": str(row["answer"]),
            "golds": self.golds(index),
            "difficulty": int(row.get("difficulty") or 0),
            "signals": self.signals(index),
        }

    def __getitem__(self, index: int) -> Example:
        row = self.rows[index]
        return Example(
            id=str(row["id"]),
            text=self.target_text(index),
            prompt=str(row["prompt"]),
            signals=self.signals(index),
        )


def open_split(
    path: str | Path,
    split: str,
    max_duration: float | None = None,
    max_examples: int | None = None,
    seed: int = 0,
    target: str = "answer",
) -> CorpusSplit | TextTaskSplit:
    """The split of a speech corpus (``corpus.json``) or a text task (``task.json``) in ``path``.

    ``max_duration`` applies to speech only, ``target`` to text only.
    """
    from flexispeech.data.text_format import is_text_task

    if is_text_task(Path(path)):
        return TextTaskSplit(path, split, max_examples=max_examples, seed=seed, target=target)
    return CorpusSplit(path, split, max_duration, max_examples, seed)
