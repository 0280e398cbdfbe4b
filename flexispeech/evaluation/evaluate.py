"""Evaluate a model (base, static LoRA or Flexi-LoRA) on a corpus split.

Every utterance is routed by the adapter's router on its cached signals, decoded at that
rank, and scored; results are broken down by complexity bucket (SNR, duration, voice,
seen/unseen voice) and written as results.json, results.md and PNG plots.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from flexispeech.data.loading import load_batches
from flexispeech.data.speech import scalar_signals
from flexispeech.data.split import Split, signals_tensor
from flexispeech.evaluation.breakdown import duration_bucket, rank_summary, ranks_by_bucket, snr_bucket
from flexispeech.evaluation.consensus import decode_consensus
from flexispeech.evaluation.fallback import Fallback, decode_with_fallback, row_decoder, second_passes
from flexispeech.evaluation.joint import decode_joint, row_scorer
from flexispeech.evaluation.metrics import error_counts
from flexispeech.lora.inject import use_ranks
from flexispeech.models.decode_features import decode_features
from flexispeech.models.example import Example
from flexispeech.signals.live import runs_model
from flexispeech.training.batch import RouterFn, route_rows


def decode_split(
    model: torch.nn.Module,
    family: Any,
    processor: Any,
    split: Split,
    router: RouterFn | None,
    batch_size: int = 16,
    num_beams: int = 1,
    progress: bool = True,
    max_new_tokens: int | None = None,
    live_signals: Sequence[str] = (),
    num_workers: int = 0,
    indices: Sequence[int] | None = None,
    fallback: Fallback | None = None,
    consensus: Sequence[int] | None = None,
    normalize: Callable[[str], str] | None = None,
    joint: Sequence[int] | None = None,
    joint_weights: dict[int, float] | None = None,
) -> tuple[list[dict[str, Any]], float]:
    """Decode every row of ``split`` (or the rows ``indices``); returns per-utterance
    records (in split order, or in the order of ``indices``) and decode seconds.

    ``router`` maps a batch's signals to ranks; None decodes the model as it is (a base
    model, or an adapter outside any ``use_ranks`` block). ``split`` is a ``CorpusSplit`` or a
    ``TextTaskSplit`` (its ``record(i)`` says what a record keeps); ``max_new_tokens`` caps
    the generated tokens (None: the family's default). ``live_signals``: signals the router
    reads that the split has not cached; they are computed from each batch's audio as
    ``flexispeech transcribe`` computes them (``signals.live``), not counted as decoding time.
    ``num_workers``: DataLoader workers that read and collate batches ahead of decoding
    (``data.loading``; 0: in this process). ``indices``: decode only these rows, batched
    as the whole split would be (e.g. one batch at a time, at one rank after another).
    ``fallback``: rows whose hypothesis loops (``evaluation.fallback``) are decoded again at
    the fallback's rank, and its hypothesis kept when it loops less; the record then holds a
    ``fallback`` note and its time counts as decoding time.
    ``consensus``: rows routed to an adapter rank are decoded at each of these ranks and
    get the hypothesis closest to the others (``evaluation.consensus``, compared after
    ``normalize``); the record's rank is the one picked, its ``consensus`` note holds every
    rank's hypothesis, and the extra decodings count as decoding time. With ``fallback``
    too, the fallback applies to the consensus.
    ``joint``: rows routed to an adapter rank are decoded at each of these ranks and get
    the hypothesis the ranks find likeliest together (``evaluation.joint``; the family
    scores transcripts with ``label_logprob``); the record's rank is the one picked, its
    ``joint`` note holds every rank's hypothesis and the scores; the extra decodings and
    scoring passes count as decoding time. Not with ``consensus``. ``joint_weights``: a
    weight per scoring rank on its vote (``decode_joint``; 1 where not named).
    """
    if consensus and joint:
        raise ValueError("consensus and joint each pick the hypothesis: give one")
    device = next(model.parameters()).device

    # Workers read and pad; Whisper's log-mel is made here, on a GPU (``decode_features``).
    features = decode_features(family, processor, device)

    # Batches of similar duration (text: prompt length): less padding, similar decoding lengths.
    lengths = split.durations
    wanted = range(len(split)) if indices is None else indices
    order = sorted(wanted, key=lambda i: lengths[i])
    records: dict[int, dict[str, Any]] = {}
    decode_s = 0.0
    model.eval()
    # Live signals are computed here from each clip's samples: the loader keeps them then.
    loaded_batches = load_batches(
        split, order, batch_size, features.collate, num_workers, keep_audio=bool(live_signals)
    )
    n_batches = math.ceil(len(order) / batch_size)
    again = bool(consensus or joint) or fallback is not None  # a batch decoded more than once
    for loaded in tqdm(loaded_batches, total=n_batches, desc="decode", unit="batch", disable=not progress):
        for i, err in loaded.errors:  # one bad file is reported and skipped, not the end of the run
            tqdm.write(f"skipped: {err}", file=sys.stderr)
            records[i] = {**split.record(i), "hyp": "", "rank": None, "error": err}
        if not loaded.rows:
            continue
        examples, inputs = loaded.examples, features.finish(loaded.inputs, device)
        # One encoder pass per clip and rank for the signals' base passes and the decodings.
        with second_passes(model, family, again or runs_model(live_signals)):
            if live_signals:
                _add_live_signals(examples, inputs, live_signals, model, family, processor, max_new_tokens)
            # Rows decode independently: the batch step puts them in rank order for speed only
            # (the loader collated them in split order; the rows of every input are reordered).
            batch = route_rows(loaded.rows, signals_tensor(examples), router)
            inputs = {
                k: (v[batch.order] if batch.ranks is not None else v).to(device)
                if isinstance(v, torch.Tensor)
                else v
                for k, v in inputs.items()
            }
            ranks_ctx = use_ranks(model, batch.ranks) if batch.ranks is not None else contextlib.nullcontext()
            t0 = time.perf_counter()
            with torch.no_grad(), ranks_ctx:
                texts = family.generate(
                    model, processor, inputs, num_beams=num_beams, max_new_tokens=max_new_tokens
                )
            ranks = [None] * len(texts) if batch.ranks is None else batch.ranks.tolist()
            decode_rows = row_decoder(model, family, processor, inputs, num_beams, max_new_tokens)
            agreed: list[dict[str, Any]] = [{} for _ in texts]
            if consensus:
                texts, ranks, agreed = decode_consensus(texts, ranks, consensus, decode_rows, normalize)
            elif joint:
                scorer = row_scorer(model, family, processor, inputs)
                texts, ranks, agreed = decode_joint(
                    texts, ranks, joint, decode_rows, scorer, normalize, joint_weights
                )
            notes: list[dict[str, Any]] = [{} for _ in texts]
            if fallback is not None:
                texts, notes = decode_with_fallback(texts, ranks, fallback, decode_rows)
            decode_s += time.perf_counter() - t0
        signals = {i: ex.signals for i, ex in zip(loaded.rows, examples)}
        for i, text, rank, note, agree in zip(batch.rows, texts, ranks, notes, agreed):
            record = split.record(i)
            if live_signals:
                record["signals"] = scalar_signals(signals[i])  # computed while decoding
            picked = {"joint" if joint else "consensus": agree} if agree else {}
            extra = ({"fallback": note} if note else {}) | picked
            records[i] = {**record, "hyp": text, "rank": rank} | extra
    return [records.get(i, {}) for i in wanted], decode_s


def _add_live_signals(
    examples: list[Example],
    inputs: dict[str, torch.Tensor],
    names: Sequence[str],
    model: torch.nn.Module,
    family: Any,
    processor: Any,
    max_new_tokens: int | None,
) -> None:
    """Fill the signals ``names`` of ``examples`` in place from their audio and their
    collated decoding ``inputs`` (``signals.live``)."""
    from flexispeech.signals.live import live_signals

    audios = [ex.audio for ex in examples]
    with torch.no_grad():
        values = live_signals(audios, inputs, names, family.name, model, processor, max_new_tokens)
    for j, ex in enumerate(examples):
        ex.signals = {**ex.signals, **{n: _scalar_or_vector(values[n][j]) for n in names}}


def _scalar_or_vector(value: Any) -> float | list[float]:
    """A live signal's value: a float, or a vector signal's list of floats (the embedding)."""
    return [float(v) for v in value] if isinstance(value, (list, tuple)) else float(value)


def _bucketed(
    records: Sequence[dict[str, Any]], key: Callable[[dict[str, Any]], Any], normalize: Callable[[str], str]
) -> dict[str, Any]:
    groups: dict[str, list[dict[str, Any]]] = {}
    for rec in records:
        groups.setdefault(str(key(rec)), []).append(rec)
    return {
        name: error_counts([r["ref"] for r in g], [r["hyp"] for r in g], normalize)
        for name, g in sorted(groups.items())
    }


def summarize(
    records: Sequence[dict[str, Any]],
    normalize: Callable[[str], str],
    decode_s: float,
    model: torch.nn.Module | None = None,
    name: str = "run",
) -> dict[str, Any]:
    """Overall and per-bucket scores, rank histogram, active parameters and real-time factor.

    Records with an ``error`` (audio that could not be decoded) are left out of every score
    and listed under ``skipped``; ``n_skipped`` counts them."""
    skipped = [{"id": r["id"], "error": r["error"]} for r in records if "error" in r]
    records = [r for r in records if "error" not in r]
    for rec in records:
        counts = error_counts([rec["ref"]], [rec["hyp"]], normalize)
        # errors and reference words per utterance: what paired comparisons add up
        # (``flexispeech compare --baseline``); None where the reference normalises to nothing
        scored = not counts["n_empty_refs"]
        rec["wer"] = counts["wer"] if scored else None
        rec["errors"] = counts["sub"] + counts["del"] + counts["ins"] if scored else None
        rec["ref_words"] = counts["ref_words"] if scored else None
    audio_s = sum(r["duration"] for r in records)
    ranks = [r["rank"] for r in records if r["rank"] is not None]
    result: dict[str, Any] = {
        "name": name,
        "n": len(records),
        "n_skipped": len(skipped),
        "skipped": skipped,
        "overall": error_counts([r["ref"] for r in records], [r["hyp"] for r in records], normalize),
        "by_snr": _bucketed(records, lambda r: snr_bucket(r["snr_db"]), normalize),
        "by_duration": _bucketed(records, lambda r: duration_bucket(r["duration"]), normalize),
        "by_voice": _bucketed(records, lambda r: r["voice"], normalize),
        "by_seen_voice": _bucketed(
            records, lambda r: {True: "seen", False: "unseen"}.get(r["seen_voice"], "unknown"), normalize
        ),
        "by_channel": _bucketed(records, lambda r: r.get("channel") or "unknown", normalize),
        "audio_s": round(audio_s, 2),
        "decode_s": round(decode_s, 2),
        "rtf": decode_s / audio_s if audio_s else math.nan,
        **rank_summary(model, ranks),
        "ranks_by_snr": ranks_by_bucket(records, lambda r: snr_bucket(r["snr_db"])),
        # rows decoded a second time because their hypothesis looped, and how many kept it
        "fallback_decodes": sum("fallback" in r for r in records),
        "fallback_kept": sum(bool(r.get("fallback", {}).get("kept")) for r in records),
        # decodings per utterance: 1, more where the consensus of several ranks served it
        "decodes_per_utterance": _decodes_per_utterance(records),
        # rows a joint pick scored: their ranks' hypotheses differed
        "scored_utterances": sum("scores" in r.get("joint", {}) for r in records),
    }
    if result["fallback_decodes"]:  # the same rows scored with the routed rank's hypotheses
        routed = [r.get("fallback", {}).get("routed_hyp", r["hyp"]) for r in records]
        result["overall_without_fallback"] = error_counts([r["ref"] for r in records], routed, normalize)
    result["utterances"] = list(records)
    return result


def _decodes_per_utterance(records: Sequence[dict[str, Any]]) -> float:
    """Mean decodings per utterance: one for a routed row, the pool's size for a consensus
    row and a joint pick's row (the loop fallback's few extra decodings are counted in
    ``fallback_decodes``)."""
    if not records:
        return 0.0
    picks = (r.get("consensus") or r.get("joint") for r in records)
    return sum(len(p["hyps"]) if p else 1 for p in picks) / len(records)


def write_results(result: dict[str, Any], out_dir: str | Path) -> Path:
    """results.json, results.md and plots of one evaluation into ``out_dir``."""
    from flexispeech.evaluation.report import markdown_summary, plot_ranks

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=2, default=float) + "\n")
    (out / "results.md").write_text(markdown_summary(result))
    if result["rank_histogram"]:
        plot_ranks([result], out / "ranks.png")
    return out
