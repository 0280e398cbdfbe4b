"""Routing by predicted benefit over the base model: labels from decoding at every rank.

Routing by difficulty gives the most capacity to the hardest inputs, which is not the
same as giving it where it helps: on noisy speech an adapter can make the transcript
worse. Here every utterance of a held-out split is decoded (greedy, batched) at each rank
of the adapter and at rank 0 (the base model); its label is the smallest rank whose WER
is the lowest, so rank 0 whenever no rank does better than the base (ties go to the lower
rank). A ``LearnedRouter`` fit on the utterances' signals serves, by default, the rank
with the fewest expected word errors for inputs like each one (fit to every rank's word
errors), or predicts that label (``objective="labels"``); ``LearnedRouter.calibrate_mean_rank``
can then set its mean rank.

Decoding every rank is the expensive part, so it is cached per utterance as it goes
(:class:`DecodeCache`, one JSON line per utterance): an interrupted run continues.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from flexispeech.data.loading import load_batches
from flexispeech.data.split import Split
from flexispeech.errors import ConfigError, FlexispeechError
from flexispeech.lora.ranks import adapter_off, use_ranks
from flexispeech.lora.router import FixedRouter, LearnedRouter, Router, Signals, feature_widths
from flexispeech.models.decode_features import decode_features


def benefit_labels(wers: torch.Tensor, ranks: Sequence[int]) -> torch.Tensor:
    """Per-utterance labels [N]: the smallest of ``ranks`` whose WER is the lowest.

    Args:
        wers: [N, len(ranks)] per-utterance WER at each rank (column order of ``ranks``).
        ranks: ascending, starting with 0 (the base model), so that an utterance that no
            rank improves is labelled 0.
    """
    ranks = [int(r) for r in ranks]
    if ranks != sorted(set(ranks)) or ranks[0] != 0:
        raise ConfigError(f"benefit ranks must be ascending, distinct and start with 0, got {ranks}")
    if wers.dim() != 2 or wers.shape[1] != len(ranks):
        raise ConfigError(f"wers must be [N, {len(ranks)}], got {list(wers.shape)}")
    best = wers.min(dim=1, keepdim=True).values
    first = (wers <= best).float().argmax(dim=1)  # argmax returns the first maximal column: the lowest rank
    return torch.tensor(ranks, dtype=torch.long)[first]


def fit_benefit_router(
    signals: Signals,
    labels: torch.Tensor,
    ranks: Sequence[int],
    features: Sequence[str],
    target_mean_rank: float | None = None,
    label_noise: float = 0.0,
    seed: int = 0,
    errors: torch.Tensor | None = None,
) -> LearnedRouter:
    """A ``LearnedRouter`` over ``features``, fit to benefit ``labels`` [N] or, given
    ``errors`` [N, len(ranks)] (each utterance's word errors at each rank), to the expected
    word errors (``LearnedRouter.fit(costs=...)``): it then serves the rank expected to make
    the fewest errors for inputs like this one, rather than the commonest label among them.
    The two differ where many utterances are perfect at every rank (label 0) and others
    just like them gain from an adapter: the labels say rank 0, the errors say otherwise.
    With ``target_mean_rank`` the rank penalty is set so that the mean rank on ``signals``
    is at most that, never raised towards it (without, it serves its prediction: rank 0
    unless a rank helps)."""
    router = LearnedRouter(ranks, features=features, widths=feature_widths(signals, features))
    if errors is not None:
        router.fit(signals, costs=errors, seed=seed)
    else:
        router.fit(signals, labels, label_noise=label_noise, seed=seed)
    if target_mean_rank is not None:
        router.calibrate_mean_rank(signals, target_mean_rank)
        # A cap, not a quota: a negative penalty would serve ranks that are not predicted
        # to help, only to spend the target.
        router.rank_penalty = max(router.rank_penalty, 0.0)
    return router


def _served_errors(router: Router, signals: Signals, errors: torch.Tensor, ranks: Sequence[int]) -> float:
    """Word errors [N, len(ranks)] summed over the ranks ``router`` serves for ``signals``."""
    col = {int(r): i for i, r in enumerate(ranks)}
    served = router(signals).tolist()
    return float(errors[torch.arange(errors.shape[0]), torch.tensor([col[int(r)] for r in served])].sum())


def cross_validated_errors(
    refit: Callable[[torch.Tensor], Router],
    signals: Signals,
    errors: torch.Tensor,
    ranks: Sequence[int],
    folds: int = 5,
    seed: int = 0,
) -> float:
    """Word errors of routers fit without the utterances they serve: ``folds`` seeded
    folds, ``refit(rows)`` fits a router on the other folds' rows [n] (indices into
    ``signals`` and ``errors`` [N, len(ranks)]), the errors of its ranks on the held-out
    fold are summed. An estimate of the router's errors on new utterances, which its
    errors in sample are not: a router fit to noisy costs fits some of the noise."""
    n = int(errors.shape[0])
    folds = max(2, min(folds, n))
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    total = 0.0
    for held in perm.chunk(folds):
        keep = torch.ones(n, dtype=torch.bool)
        keep[held] = False
        router = refit(torch.arange(n)[keep])
        total += _served_errors(router, {k: v[held] for k, v in signals.items()}, errors[held], ranks)
    return total


def constant_fallback(
    router: Router,
    signals: Signals,
    errors: torch.Tensor,
    ranks: Sequence[int],
    max_mean_rank: float | None = None,
    refit: Callable[[torch.Tensor], Router] | None = None,
    folds: int = 5,
) -> tuple[Router, dict[str, Any]]:
    """``router``, or a ``FixedRouter`` at the best single rank if serving every utterance
    at that rank makes fewer word errors.

    A router fit to noisy per-utterance errors can do worse than no routing at all (the GPU
    study's first benefit router: 20.9 % WER even on the split it was fit on, against
    16.7 % for every utterance at rank 4 under the same mean-rank cap). With ``refit`` (a
    function fitting the same kind of router on a subset of rows) the router's errors are
    cross-validated (``cross_validated_errors``), since in sample it also scores the noise it
    fit; without, they are its errors in sample.

    Args:
        errors: [N, len(ranks)] each utterance's word errors at each rank (``ranks`` order).
        max_mean_rank: only ranks at most this are candidates (the router's cap).

    Returns:
        (the router to serve, a report: the router's errors in sample and cross-validated,
        the best constant rank and its errors, and whether it was chosen).
    """
    ranks = [int(r) for r in ranks]
    col = {r: i for i, r in enumerate(ranks)}
    in_sample = _served_errors(router, signals, errors, ranks)
    n = int(errors.shape[0])
    cross = (
        cross_validated_errors(refit, signals, errors, ranks, folds) if refit is not None and n >= 4 else None
    )
    allowed = [r for r in ranks if max_mean_rank is None or r <= max_mean_rank]
    totals = {r: float(errors[:, col[r]].sum()) for r in allowed}
    best = min(allowed, key=lambda r: (totals[r], r))
    compared = in_sample if cross is None else cross
    chosen = totals[best] < compared
    report = {
        "router_errors": in_sample,
        "router_errors_cross_validated": cross,
        "best_constant_rank": best,
        "best_constant_errors": totals[best],
        "fallback_to_constant": chosen,
    }
    return (FixedRouter(best) if chosen else router), report


def fit_with_fallback(
    signals: Signals,
    labels: torch.Tensor,
    ranks: Sequence[int],
    features: Sequence[str],
    errors: torch.Tensor,
    objective: str = "errors",
    target_mean_rank: float | None = None,
    label_noise: float = 0.0,
    seed: int = 0,
) -> tuple[Router, dict[str, Any]]:
    """The router ``flexispeech calibrate`` serves, for speech and text alike: a benefit
    router fit on every row, to ``errors`` [N, len(ranks)] (``objective="errors"``) or to
    ``labels`` [N] (``"labels"``), then judged by :func:`constant_fallback` on ``errors``,
    cross-validated by the same fit on 5 folds, against the best single rank under
    ``target_mean_rank``. Returns the router to serve and the fallback's report."""
    costs = errors if objective == "errors" else None
    router = fit_benefit_router(signals, labels, ranks, features, target_mean_rank, label_noise, seed, costs)

    def refit(keep: torch.Tensor) -> Router:  # the same fit on a subset of the rows (cross-validation)
        return fit_benefit_router(
            {k: v[keep] for k, v in signals.items()},
            labels[keep],
            ranks,
            features,
            target_mean_rank,
            label_noise,
            seed,
            None if costs is None else costs[keep],
        )

    return constant_fallback(router, signals, errors, ranks, target_mean_rank, refit=refit)


def reference_words(split: Split, rows: Sequence[int], normalize: Callable[[str], str]) -> torch.Tensor:
    """Normalised reference words of each of ``rows`` [n] (WER x words = word errors)."""
    return torch.tensor(
        [len(normalize(str(split.rows[i]["text"])).split()) for i in rows], dtype=torch.float64
    )


def adapter_fingerprint(adapter_dir: Path) -> str:
    """A hash of an adapter's weights and config: a decode cache belongs to one adapter."""
    h = hashlib.sha1()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        h.update((adapter_dir / name).read_bytes())
    return h.hexdigest()[:16]


class DecodeCache:
    """Per-utterance transcripts at every rank, one JSON line each, appended as they come.

    The first line is a header (the adapter's fingerprint, the split, the ranks, the
    decoding settings); a cache whose header differs belongs to another run and is started
    afresh. A last line cut short by a kill is dropped on reading.
    """

    def __init__(self, path: Path, header: dict[str, Any]) -> None:
        self.path, self.header = Path(path), json.loads(json.dumps(header))  # as it reads back
        self.hyps: dict[str, dict[int, str]] = {}
        lines = self.path.read_text().splitlines() if self.path.is_file() else []
        if lines and self._parse(lines[0]) == header:
            for line in lines[1:]:
                entry = self._parse(line)
                if entry is not None:
                    self.hyps[entry["id"]] = {int(r): h for r, h in entry["hyps"].items()}
            if not self.path.read_text().endswith("\n"):  # a cut line: rewrite without it
                self._rewrite()
        else:
            if lines:
                print(f"{self.path}: made for another adapter, split or setting: starting afresh")
            self._rewrite()

    @staticmethod
    def _parse(line: str) -> Any:
        try:
            return json.loads(line)
        except json.JSONDecodeError:
            return None

    def _rewrite(self) -> None:
        from flexispeech.atomic import write_text

        self.path.parent.mkdir(parents=True, exist_ok=True)
        body = [json.dumps(self.header)] + [json.dumps({"id": i, "hyps": h}) for i, h in self.hyps.items()]
        write_text(self.path, "".join(line + "\n" for line in body))

    def add(self, entries: dict[str, dict[int, str]]) -> None:
        """Record utterance id -> {rank: transcript} and append them to the file."""
        self.hyps.update(entries)
        with self.path.open("a") as f:
            f.write("".join(json.dumps({"id": i, "hyps": h}) + "\n" for i, h in entries.items()))
            f.flush()


@contextmanager
def _at_rank(model: torch.nn.Module, rank: int) -> Iterator[None]:
    """Every row at ``rank``; rank 0 is the base model even when it is not a configured rank."""
    if rank == 0:
        with adapter_off(model):
            yield
    else:
        with use_ranks(model, rank):
            yield


def decode_at_ranks(
    model: torch.nn.Module,
    family: Any,
    processor: Any,
    split: Split,
    ranks: Sequence[int],
    cache: DecodeCache,
    batch_size: int = 16,
    progress: bool = True,
    num_workers: int = 0,
) -> dict[str, dict[int, str]]:
    """Greedy transcripts of every row of ``split`` at each of ``ranks`` (utterance id ->
    {rank: text}); rows already in ``cache`` are not decoded again, new ones are added to
    it batch by batch. Rows whose audio cannot be decoded are reported and left out.
    ``num_workers``: loader workers reading and collating batches ahead (``data.loading``)."""
    device = next(model.parameters()).device
    todo, bar = pending_rows(split, cache, f"decode at ranks {list(ranks)}", "utt", progress)
    model.eval()
    features = decode_features(family, processor, device)  # log-mel on a GPU, here
    for loaded in load_batches(split, todo, batch_size, features.collate, num_workers):
        for _, err in loaded.errors:
            tqdm.write(f"skipped: {err}", file=sys.stderr)
        if loaded.rows:
            inputs = features.finish(loaded.inputs, device)
            inputs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
            texts: dict[int, list[str]] = {}
            with torch.no_grad():
                for r in ranks:
                    with _at_rank(model, int(r)):
                        texts[int(r)] = family.generate(model, processor, inputs, num_beams=1)
            cache.add({ex.id: {r: texts[r][j] for r in texts} for j, ex in enumerate(loaded.examples)})
        bar.update(len(loaded.rows) + len(loaded.errors))
    bar.close()
    return {str(r["id"]): cache.hyps[str(r["id"])] for r in split.rows if str(r["id"]) in cache.hyps}


def wer_table(
    split: Split, hyps: dict[str, dict[int, str]], ranks: Sequence[int], normalize: Callable[[str], str]
) -> tuple[list[int], torch.Tensor]:
    """Row indices of ``split`` that have transcripts and a scorable reference, and their
    per-utterance WER at each rank, [n, len(ranks)]."""
    from flexispeech.evaluation.metrics import utterance_wer

    rows, table = [], []
    for i, row in enumerate(split.rows):
        got = hyps.get(str(row["id"]))
        if got is None:
            continue
        wers = [utterance_wer(str(row["text"]), got[int(r)], normalize) for r in ranks]
        if any(w is None for w in wers):  # an empty reference has no WER
            continue
        rows.append(i)
        table.append(wers)
    if not rows:
        raise FlexispeechError(f"{split.corpus_dir}: no utterance of the split could be scored")
    return rows, torch.tensor(table, dtype=torch.float64)


def serve_fitted_router(
    model: torch.nn.Module,
    router: Router,
    fallback: dict[str, Any],
    signals: Signals,
    out: Path,
    errors_on: str,
    unit: str,
    digits: int = 0,
) -> torch.Tensor:
    """Say how the fitted router did against one rank for every input (``fallback`` from
    ``fit_with_fallback``), attach it to ``model`` and save the adapter in ``out``.

    ``errors_on`` names the errors and the split ("word errors on validation"), ``unit``
    one input ("utterance", "question"), ``digits`` the decimals of the error totals.
    Returns the rank [N] the router serves each row of ``signals``.
    """
    from flexispeech.lora.inject import attach_router
    from flexispeech.lora.io import save_adapter

    judged = fallback["router_errors_cross_validated"]
    judged = fallback["router_errors"] if judged is None else judged
    constant = fallback["best_constant_rank"]
    print(
        f"router: {judged:.{digits}f} {errors_on} (cross-validated; {fallback['router_errors']:.{digits}f} "
        f"in sample); every {unit} at rank {constant}: {fallback['best_constant_errors']:.{digits}f}"
        + (f" -> serving rank {constant}" if fallback["fallback_to_constant"] else "")
    )
    routed = router(signals)
    attach_router(model, router)
    save_adapter(model, out)
    return routed


def pending_rows(
    split: Any, cache: DecodeCache, desc: str, unit: str, progress: bool
) -> tuple[list[int], Any]:
    """The rows of ``split`` not yet in ``cache``, shortest first (batches of similar
    length), and a progress bar that starts at the rows already decoded."""
    todo = [
        i
        for i in sorted(range(len(split)), key=lambda i: split.durations[i])
        if str(split.rows[i]["id"]) not in cache.hyps
    ]
    bar = tqdm(total=len(split), initial=len(split) - len(todo), desc=desc, unit=unit, disable=not progress)
    return todo, bar


def open_decode_cache(
    adapter: Path, cache_dir: str | None, split: str, ranks: Sequence[int], **header: Any
) -> tuple[Path, DecodeCache]:
    """The folder of a calibration's decodes (default ``<adapter>/../calibrate_<split>``)
    and its cache, keyed by the adapter's fingerprint, the split, the ranks and ``header``
    (what else changes a decode: the window, the token cap)."""
    folder = Path(cache_dir) if cache_dir else adapter.parent / f"calibrate_{split}"
    key = {"adapter": adapter_fingerprint(adapter), "split": split, "ranks": list(ranks), **header}
    return folder, DecodeCache(folder / "decodes.jsonl", key)
