"""Validation during training and early stopping on it.

Every ``train.eval_every`` optimizer steps the run computes its loss on a fixed subset of
the validation split (``train.eval_examples`` rows, a seeded sample), batched through the
batch step of ``training.batch``, each row at the rank the *inference* router gives it
(what the adapter will be served at; for the inconsistent ablation that is not the rank
it trained at), in eval mode and without gradients. The loss is logged overall and per
rank (``training.rank_losses``). With ``train.early_stopping.patience`` the best adapter
so far is kept, and the run stops after ``patience`` evaluations without improvement (not
before ``min_steps``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from flexispeech.data.split import Split
from flexispeech.errors import ConfigError
from flexispeech.evaluation.fallback import Fallback, decode_with_fallback, row_decoder
from flexispeech.lora.ranks import use_ranks
from flexispeech.models.family import Example, ModelFamily
from flexispeech.training.batch import Batch, prepare_batch
from flexispeech.training.rank_losses import RankLosses, capture_row_losses

if TYPE_CHECKING:  # annotations only: the checkpoint module is the state's home
    from flexispeech.training.checkpoint import TrainerState

METRICS = ("loss", "wer")


@dataclass
class EarlyStoppingConfig:
    patience: int | None = None
    """Stop after this many validations in a row without improvement (None: never stop
    early; the final adapter is then the last one). Needs ``train.eval_every``."""
    metric: str = "loss"
    """What decides, lower is better: ``loss`` (validation loss at the inference router's
    ranks) or ``wer`` (speech: the same rows decoded greedily at those ranks and scored
    with Whisper's English normalizer). The loss is teacher-forced and does not see a
    decoder that loops: in the GPU study static r16's validation loss went on improving
    from step 200 to 600 (0.543 to 0.525) while its test WER rose from 22.6 to 24.2 %, its
    insertions from 3,141 to 5,255, and its WER on real speech from 12.1 to 19.5 %."""
    fallback_rank: int | None = None
    """With ``metric: wer``: a validation row whose hypothesis loops (gzip compression ratio
    over 2.4) is decoded again at this rank and the hypothesis that loops less kept, as
    ``flexispeech eval --fallback-rank`` serves it (None: plain greedy decoding). In the GPU
    study fewer than 0.5 % of the utterances looped and moved a run's WER by up to 2.6
    points, so without it the step kept depends on a handful of loops."""
    min_delta: float = 0.0
    """An improvement must lower the metric by more than this."""
    min_steps: int = 0
    """No run stops before this many optimizer steps (the best adapter is still tracked
    from the first validation). A validation loss on a few hundred rows is noisy, and a run
    stopped by one unlucky stretch of it early on is undertrained: in the GPU study static
    LoRA r16 stopped at step 400 keeping step 200, while the Flexi runs went on to 800 and
    1,500 steps under the same rule. About one epoch gives every run the whole training
    split at least once."""

    def check(self, eval_every: int) -> None:
        """ConfigError (one line) for settings that cannot work."""
        if self.metric not in METRICS:
            raise ConfigError(
                f"train.early_stopping.metric: expected one of {list(METRICS)}, got {self.metric!r}"
            )
        if self.patience is not None and self.patience < 1:
            raise ConfigError(
                f"train.early_stopping.patience: expected >= 1 validations, got {self.patience}"
            )
        if self.patience is not None and eval_every < 1:
            raise ConfigError("train.early_stopping needs train.eval_every >= 1 (validations to stop on)")
        if self.fallback_rank is not None and (self.metric != "wer" or self.fallback_rank < 0):
            raise ConfigError(
                "train.early_stopping.fallback_rank: a rank >= 0, with metric: wer "
                f"(got {self.fallback_rank} with metric {self.metric!r})"
            )
        if self.min_delta < 0:
            raise ConfigError(f"train.early_stopping.min_delta: expected >= 0, got {self.min_delta}")
        if self.min_steps < 0:
            raise ConfigError(f"train.early_stopping.min_steps: expected >= 0, got {self.min_steps}")


@dataclass
class Validation:
    """One validation: ``loss`` (token mean where the family allows it, else the row-weighted
    mean of batch losses), ``by_rank`` (``{rank: loss}``, empty when not captured), rows."""

    loss: float
    by_rank: dict[str, float]
    n: int
    wer: float | None = None
    """Greedy-decoding WER of the rows (``Validator``'s ``normalize`` given), else None."""
    fallback_kept: int | None = None
    """Rows whose looping hypothesis was replaced by the fallback's (None: no fallback)."""


class Validator:
    """Validation loss of a model on a fixed set of rows.

    Args:
        split: the validation rows (already sampled to the subset to use).
        family, processor: collate and loss.
        router: the inference router (a fixed one for static LoRA).
        batch_size: rows per batch.
        normalize: also decode the rows and score their WER with this text normalizer
            (speech families; None: the loss only).
        fallback: with ``normalize``, decode looping rows again (``evaluation.fallback``).
    """

    def __init__(
        self,
        split: Split,
        family: ModelFamily,
        processor: Any,
        router: Callable[[dict[str, torch.Tensor]], torch.Tensor],
        batch_size: int,
        normalize: Callable[[str], str] | None = None,
        fallback: Fallback | None = None,
    ) -> None:
        self.split, self.family, self.processor, self.router = split, family, processor, router
        self.batch_size, self.normalize, self.fallback = batch_size, normalize, fallback
        lengths = split.durations  # batches of similar length: less padding
        self.order = sorted(range(len(split)), key=lambda i: lengths[i])
        self._batches: list[Batch[int]] | None = None

    def batches(self) -> list[Batch[int]]:
        """The routed, collated validation batches, made at the first validation and kept:
        the rows, their features and the inference router's ranks are the same every time,
        and reading and featurising the clips again would cost more than the pass itself
        (about 2 MB per row at a 30-s window)."""
        if self._batches is None:
            self._batches = [
                prepare_batch([self.split[i] for i in idx], self.router, self.collate, rows=idx)
                for idx in (
                    self.order[start : start + self.batch_size]
                    for start in range(0, len(self.order), self.batch_size)
                )
            ]
        return self._batches

    def collate(self, examples: list[Example]) -> dict[str, torch.Tensor]:
        return self.family.collate(self.processor, examples, train=True)

    @torch.no_grad()
    def __call__(self, model: nn.Module) -> Validation:
        """Validate ``model`` (put in eval mode for the pass, and back in its mode after)."""
        was_training = model.training
        model.eval()
        per_rank, weighted, rows = RankLosses(), 0.0, 0
        refs: list[str] = []
        hyps: list[str] = []
        kept = 0
        try:
            for batch in self.batches():
                with use_ranks(model, batch.ranks), capture_row_losses(model) as captured:
                    loss = float(self.family.loss(model, batch.inputs))
                per_rank.add(batch.ranks, captured)
                weighted += loss * len(batch.rows)
                rows += len(batch.rows)
                if self.normalize is not None:
                    with use_ranks(model, batch.ranks):
                        texts = self.family.generate(model, self.processor, batch.inputs, num_beams=1)
                    if self.fallback is not None:
                        decode_rows = row_decoder(model, self.family, self.processor, batch.inputs)
                        texts, notes = decode_with_fallback(
                            texts, batch.ranks.tolist(), self.fallback, decode_rows
                        )
                        kept += sum(bool(n.get("kept")) for n in notes)
                    hyps += texts
                    refs += [str(self.split.record(i)["ref"]) for i in batch.rows]
        finally:
            model.train(was_training)
        token_mean = per_rank.mean()
        wer = None
        if self.normalize is not None:
            from flexispeech.evaluation.metrics import error_counts

            wer = float(error_counts(refs, hyps, self.normalize)["wer"])
        return Validation(
            weighted / rows if token_mean is None else token_mean,
            per_rank.mean_by_rank(),
            rows,
            wer,
            kept if self.fallback is not None and wer is not None else None,
        )


def improved(best: float | None, value: float, min_delta: float) -> bool:
    """Whether ``value`` beats ``best`` (lower is better) by more than ``min_delta``."""
    return best is None or value < best - min_delta


def record_validation(state: TrainerState, value: float, min_delta: float) -> bool:
    """Update the best metric ``value``, its step and the count of validations without
    improvement in ``state``; returns whether ``value`` improved on the best."""
    better = improved(state.best_metric, value, min_delta)
    if better:
        state.best_metric, state.best_step, state.bad_evals = value, state.step, 0
    else:
        state.bad_evals += 1
    return better


def validation_entry(state: TrainerState, result: Validation) -> dict[str, Any]:
    """The train_log.jsonl line of a validation."""
    entry = {
        "step": state.step,
        "val_loss": round(result.loss, 5),
        "val_loss_by_rank": result.by_rank,
        "val_examples": result.n,
        "best_step": state.best_step,
    }
    if result.wer is not None:
        entry["val_wer"] = round(result.wer, 5)
    if result.fallback_kept is not None:
        entry["val_fallback_kept"] = result.fallback_kept
    return entry


def stop_reason(state: TrainerState, es: EarlyStoppingConfig) -> str | None:
    """Why early stopping ends the run now, or None to go on."""
    if es.patience is not None and state.bad_evals >= es.patience and state.step >= es.min_steps:
        return (
            f"early stopping: validation {es.metric} did not improve for {state.bad_evals} "
            f"validations after step {state.best_step}"
        )
    return None


def kept_step(state: TrainerState, es: EarlyStoppingConfig, validating: bool) -> dict[str, Any]:
    """Which step's adapter a run keeps, and why: the best validation step under early
    stopping, else the last one."""
    if es.patience is None or state.best_step is None:
        why = "the last step" + ("" if not validating else " (early stopping off)")
        return {"step": state.step, "why": why}
    return {
        "step": state.best_step,
        "why": f"best validation {es.metric}",
        f"val_{es.metric}": round(state.best_metric, 5),
    }
