"""Train a Flexi-LoRA adapter inside Hugging Face ``Seq2SeqTrainer``.

Two pieces replace their transformers counterparts and nothing else changes (arguments,
callbacks, ``accelerate`` multi-process, logging)::

    inject(model, FlexiLoraConfig(ranks=(0, 2, 4, 8)))
    attach_router(model, router)                           # the router serves inference too
    trainer = FlexiSeq2SeqTrainer(model=model, args=args, train_dataset=split,
                                  data_collator=FlexiSpeechCollator(processor))
    trainer.train()

- ``FlexiSpeechCollator`` turns ``Example`` items (a ``CorpusSplit``) into the family's model
  inputs plus the batch's complexity signals under ``SIGNALS_KEY``.
- ``FlexiSeq2SeqTrainer`` routes each batch with the adapter's router, computes the loss
  inside ``use_ranks`` (rows sorted by rank, so the CPU's segmented path runs one truncated
  matmul per rank), decodes ``predict_with_generate`` under the same ranks, and saves the
  adapter (``save_adapter``) instead of the whole model at every checkpoint; resuming and
  ``load_best_model_at_end`` load it back.

Under ``accelerate launch`` / ``torchrun`` each process routes its own local batch, as at
inference. Rows at rank 0 leave adapter parameters unused in a step; the layers keep them
in the graph with a zero contribution, so DDP needs no ``find_unused_parameters``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from transformers import Seq2SeqTrainer
from transformers.trainer import TRAINING_ARGS_NAME

from flexispeech.data.speech import signals_tensor
from flexispeech.errors import ConfigError
from flexispeech.lora.inject import get_router, use_ranks
from flexispeech.lora.io import load_adapter, save_adapter
from flexispeech.lora.plans import rank_sort_order
from flexispeech.models.family import Example, ModelFamily, get_family

SIGNALS_KEY = "flexi_signals"
"""The batch key holding the complexity signals, name -> [batch] float32 (not a model input)."""
# Family inputs that only flexispeech's own decoding reads (long-form Whisper); the
# Trainer passes every key to the model's forward, which does not take them.
NOT_MODEL_INPUTS = ("num_frames",)


class FlexiSpeechCollator:
    """``data_collator`` for ``FlexiSeq2SeqTrainer``: ``Example`` items -> model inputs with
    ``labels`` (``family.collate``) and the signals under ``SIGNALS_KEY``.

    Args:
        processor: the family's processor (``WhisperProcessor`` for Whisper).
        family: a ``ModelFamily`` or its name (default ``"whisper"``).
    """

    def __init__(self, processor: Any, family: ModelFamily | str = "whisper") -> None:
        self.processor = processor
        self.family = get_family(family) if isinstance(family, str) else family

    def __call__(self, examples: Sequence[Example]) -> dict[str, Any]:
        inputs = self.family.collate(self.processor, examples, train=True)
        batch: dict[str, Any] = {k: v for k, v in inputs.items() if k not in NOT_MODEL_INPUTS}
        batch[SIGNALS_KEY] = signals_tensor(examples)
        return batch


def take_rows(inputs: Mapping[str, Any], order: torch.Tensor, batch: int) -> dict[str, Any]:
    """``inputs`` with the rows of every [batch, ...] tensor in ``order``."""

    def rows(v: Any) -> bool:
        return isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] == batch

    return {k: v[order.to(v.device)] if rows(v) else v for k, v in inputs.items()}


class FlexiSeq2SeqTrainer(Seq2SeqTrainer):
    """``Seq2SeqTrainer`` for a model with a Flexi-LoRA adapter: every batch runs at the
    ranks its router gives, in training, evaluation and ``predict_with_generate``.

    Args:
        router: maps the batch's signals to ranks [batch]; default: the router attached to
            the model (``attach_router``), which ``save_adapter`` saves for inference.
        Everything else as ``Seq2SeqTrainer``; the batches must carry ``SIGNALS_KEY``
        (``FlexiSpeechCollator``).
    """

    def __init__(self, *args: Any, router: Any = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.router = router

    def route(self, signals: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Ranks [batch] of a batch's signals, from ``router`` or the adapter's router."""
        router = self.router if self.router is not None else get_router(self.model)
        if router is None:
            raise ConfigError(
                "FlexiSeq2SeqTrainer: no router; attach one to the model (attach_router) or pass router="
            )
        return torch.as_tensor(router({k: v.detach().cpu() for k, v in signals.items()})).long()

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> Any:
        """The Trainer's loss under the batch's routed ranks. Without ``SIGNALS_KEY`` the
        ranks in force are kept (``prediction_step`` has entered ``use_ranks`` already)."""
        if SIGNALS_KEY not in inputs:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        inputs = dict(inputs)
        ranks = self.route(inputs.pop(SIGNALS_KEY))
        if not return_outputs:
            # Rows of equal rank side by side: the token-mean loss does not depend on row
            # order, and the segmented path then runs one truncated matmul per rank. Outputs
            # that the caller pairs with its labels keep their order.
            order = rank_sort_order(ranks)
            inputs, ranks = take_rows(inputs, order, ranks.shape[0]), ranks[order]
        with use_ranks(model, ranks):
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    def prediction_step(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        prediction_loss_only: bool,
        ignore_keys: list[str] | None = None,
        **gen_kwargs: Any,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        """Loss and (with ``predict_with_generate``) generated tokens, both under the
        batch's routed ranks; beams follow their example's rank."""
        inputs = dict(inputs)
        ranks = self.route(inputs.pop(SIGNALS_KEY))
        gen_kwargs = {**getattr(self, "_gen_kwargs", {}), **gen_kwargs}  # ours must not drop evaluate()'s
        if getattr(self.model.config, "model_type", None) == "whisper":
            # Short-form Whisper generation re-runs rows that emitted a timestamp as a
            # smaller batch, which would no longer line up with the ranks: one call only.
            gen_kwargs.setdefault("force_unique_generate_call", True)
        with use_ranks(model, ranks):
            return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys, **gen_kwargs)

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """Save the adapter (``save_adapter``: weights, config, router), the processor and
        the training arguments; the frozen base model is never written again."""
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if not self.args.should_save:
            return
        os.makedirs(output_dir, exist_ok=True)
        save_adapter(self.accelerator.unwrap_model(self.model), output_dir)
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)
        torch.save(self.args, os.path.join(output_dir, TRAINING_ARGS_NAME))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        load_adapter(
            self.accelerator.unwrap_model(model if model is not None else self.model), resume_from_checkpoint
        )

    def _load_best_model(self) -> None:
        load_adapter(self.accelerator.unwrap_model(self.model), self.state.best_model_checkpoint)
