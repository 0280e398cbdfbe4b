"""How evaluation results are broken down: SNR and duration buckets, and the summary of
the ranks an evaluation used, which speech (``evaluate``) and text (``text_report``)
results share and the reports (``report``) read back. It imports no other evaluation
module, so every one of them can import it.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import torch

from flexispeech.lora.stats import count_parameters

SNR_BUCKETS = ((20.0, "≥20 dB"), (10.0, "10–20 dB"), (5.0, "5–10 dB"), (-math.inf, "<5 dB"))
DURATION_BUCKETS = ((15.0, "≥15 s"), (8.0, "8–15 s"), (3.0, "3–8 s"), (0.0, "<3 s"))
SNR_ORDER = ["clean"] + [name for _, name in SNR_BUCKETS]
DURATION_ORDER = [name for _, name in reversed(DURATION_BUCKETS)]


def snr_bucket(snr: float | None) -> str:
    """The SNR bucket of a mixing SNR (None/NaN = no noise added = clean)."""
    if snr is None or snr != snr:
        return "clean"
    return next(name for low, name in SNR_BUCKETS if snr >= low)


def duration_bucket(duration: float) -> str:
    """The duration bucket of an utterance of ``duration`` seconds."""
    return next(name for low, name in DURATION_BUCKETS if duration >= low)


def ranks_by_bucket(
    records: Sequence[dict[str, Any]], bucket: Callable[[dict[str, Any]], str]
) -> dict[str, dict[str, int]]:
    """Utterances per rank in each bucket: ``{bucket: {rank: n}}`` (empty for a base model,
    whose records carry no rank), e.g. which ranks the router served at each SNR."""
    out: dict[str, Counter] = {}
    for rec in records:
        if rec.get("rank") is not None:
            out.setdefault(bucket(rec), Counter())[rec["rank"]] += 1
    return {name: {str(r): n for r, n in sorted(c.items())} for name, c in sorted(out.items())}


def rank_summary(model: torch.nn.Module | None, ranks: Sequence[int]) -> dict[str, Any]:
    """Rank histogram, mean rank, and total / mean active adapter parameters of an
    evaluation's per-example ranks (zeros for a base model)."""
    summary: dict[str, Any] = {
        "rank_histogram": {str(k): v for k, v in sorted(Counter(ranks).items())},
        "mean_rank": sum(ranks) / len(ranks) if ranks else 0.0,
        "adapter_params_total": 0,
        "active_params_mean": 0.0,
    }
    if model is not None and ranks:
        params = count_parameters(model, ranks)
        summary["adapter_params_total"] = params.total
        summary["active_params_mean"] = params.active_mean
    return summary
