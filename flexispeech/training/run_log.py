"""What a training run writes beside its adapter: ``config.yaml``, ``train_log.jsonl`` (one
line per ``train.log_every`` steps and per validation) and ``train_summary.json``.

Only the main process of a multi-process run writes them (the trainer decides).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import yaml

from flexispeech.training.config import RunConfig, to_dict

LOG_NAME = "train_log.jsonl"
SUMMARY_NAME = "train_summary.json"


def start_logs(out: Path, cfg: RunConfig, keep_until: int | None) -> None:
    """Write ``config.yaml``; cut ``train_log.jsonl`` back to the lines up to step
    ``keep_until`` (a resumed run's checkpoint step), or empty it (``None``: a fresh start)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    log_path = out / LOG_NAME
    kept = []
    if keep_until is not None and log_path.exists():
        kept = [ln for ln in log_path.read_text().splitlines() if json.loads(ln)["step"] <= keep_until]
    log_path.write_text("".join(ln + "\n" for ln in kept))


def append_log(out: Path, entry: dict[str, Any]) -> None:
    """One line of ``train_log.jsonl``."""
    with (out / LOG_NAME).open("a") as f:
        f.write(json.dumps(entry) + "\n")


def rank_histogram(counts: Counter | dict[int, int]) -> dict[str, int]:
    """``{rank: rows}`` with string keys (JSON's), in rank order."""
    return {str(k): v for k, v in sorted(counts.items())}


def write_summary(out: Path, summary: dict[str, Any]) -> None:
    """``train_summary.json``."""
    (out / SUMMARY_NAME).write_text(json.dumps(summary, indent=2) + "\n")
