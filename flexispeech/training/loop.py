"""One training loop for every family: Flexi-LoRA (or static LoRA) on a corpus split.

Built on ``accelerate``: the same code runs on one CPU, one GPU, or several processes
under ``accelerate launch`` / ``torchrun`` (DDP). Each optimizer step consumes one *global*
batch of ``batch_size * world_size * grad_accum`` examples in an order fixed by the seed,
so a multi-process run sees the same examples per step as a single-process run with the
same global batch. Ranks come from the run's router on each batch's signals, exactly as
at inference, through the batch step of ``flexispeech.training.batch`` (rows are planned
and routed here, collated by ``train.num_workers`` DataLoader workers). Family-specific
training inputs (Whisper's cached encoder prefix) come from ``models.family.train_inputs``.
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from flexispeech.data.augment import step_generator
from flexispeech.data.speech import LengthBucketSampler
from flexispeech.data.text import open_split
from flexispeech.errors import ConfigError
from flexispeech.host_copy import to_device
from flexispeech.lora.inject import adapter_parameters, attach_router, inject, use_ranks
from flexispeech.lora.io import load_adapter, save_adapter
from flexispeech.lora.router import RandomRouter
from flexispeech.lora.stats import count_parameters
from flexispeech.models.family import TrainInputs, train_inputs
from flexispeech.training.augmented import AudioInputs, batch_maker, check_augment
from flexispeech.training.batch import Batch, BatchPlan, train_loader
from flexispeech.training.checkpoint import TrainerState, find_checkpoint, load_checkpoint, save_checkpoint
from flexispeech.training.config import RunConfig
from flexispeech.training.early_stopping import (
    kept_step,
    record_validation,
    stop_reason,
    validation_entry,
)
from flexispeech.training.graphs import graphed_steps
from flexispeech.training.keep_base import KeepBaseInputs
from flexispeech.training.nested import check_nested, nested_generator, nested_loss
from flexispeech.training.rank_losses import RankLosses, capture_row_losses
from flexispeech.training.routing import build_routers
from flexispeech.training.run_log import append_log, rank_histogram, start_logs, write_summary
from flexispeech.training.run_setup import (
    adapter_config,
    allow_new_precision,
    build_validator,
    load_model,
    lr_schedule,
    max_duration,
)
from flexispeech.training.throughput import Throughput

BEST_ADAPTER = "best_adapter"  # early stopping: the best adapter so far, beside the checkpoint


def _hist(counts: Counter | dict[int, int]) -> str:
    return " ".join(f"r{r}:{n}" for r, n in sorted(counts.items()))


def _to_device(inputs: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    # pinned host copies: a pageable one would wait for the previous step to finish (host_copy)
    return {k: to_device(v, device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}


class Trainer:
    """One training run in three parts: ``setup`` (model, data, routers, optimizer, resume),
    ``_loss_step`` (the loss of one routed micro-batch) and ``train`` (the loop, checkpoints,
    the final adapter). :func:`train` runs them; a test keeps the object to inspect ``model``.

    With ``resume`` the run continues from ``<output_dir>/checkpoint`` (a killed run ends
    with the same adapter as an uninterrupted one) and says so: a line on stdout and
    ``resumed`` / ``steps_run`` in ``train_summary.json``.
    """

    def __init__(self, cfg: RunConfig, resume: bool = False, progress: bool = True) -> None:
        self.cfg, self.resume, self.progress = cfg, resume, progress
        self.out = Path(cfg.output_dir)

    def setup(self) -> None:
        """Load, inject, build routers and optimizer, restore a checkpoint, write config.yaml."""
        from accelerate import Accelerator, DistributedDataParallelKwargs
        from accelerate.utils import set_seed

        cfg = self.cfg
        cfg.check()
        check_augment(cfg.augment, cfg.model.family, cfg.model.cache_encoder_layers)
        allow_new_precision(cfg.train.mixed_precision)
        # Rows at rank 0 leave adapter parameters unused in some steps: DDP must allow that.
        self.accelerator = Accelerator(
            mixed_precision=cfg.train.mixed_precision,
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
        )
        set_seed(cfg.seed)
        self.family, model, self.processor = load_model(cfg, self.accelerator.device)
        self.split = open_split(
            cfg.data.corpus,
            cfg.data.train_split,
            max_duration(self.cfg),
            cfg.data.max_train_examples,
            cfg.seed,
            cfg.data.target,
        )
        uses_learned = cfg.routing.mode == "learned" or (
            cfg.routing.mode == "inconsistent" and cfg.routing.inference_router == "learned"
        )
        difficulty = self.split.column(cfg.routing.difficulty) if uses_learned else None
        self.train_router, self.infer_router = build_routers(
            cfg.routing, tuple(cfg.adapter.ranks), self.split.all_signals(), difficulty, cfg.seed
        )
        inject(model, adapter_config(cfg, self.family))
        attach_router(model, self.infer_router)
        model.train()
        self.optimizer = torch.optim.AdamW(
            adapter_parameters(model), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay
        )
        self.scheduler = lr_schedule(cfg, self.optimizer)
        self.state, self.resumed_from = self._restore(model)
        self.router_state: Any = None  # of the last micro-batch trained on (random routers)
        self.start_step = self.state.step
        self.steps_run = 0  # optimizer steps taken by this process (a resumed run skips the earlier ones)
        self.throughput = Throughput()  # this session's data wait, augmentation and validation time
        self.counts: Counter = Counter({int(k): v for k, v in self.state.rank_counts.items()})
        # Detached loss tensors, read on the host only when a line is logged: a float() per
        # step would make the host wait for each backward pass before queuing the next batch.
        self.losses: list[torch.Tensor] = []
        self.augmenter = batch_maker(
            cfg.augment,
            self.family,
            self.processor,
            self.split,
            self.train_router,
            self.accelerator.device,
            cfg.model.cache_encoder_layers,
            cfg.train.features_on_device,
        )
        self.inputs = self._train_inputs(model)
        # The training loss; with train.keep_base, plus the KL term towards the base model
        # (validation keeps the plain loss: the runs' validation losses stay comparable).
        self.loss_inputs: TrainInputs = self.inputs
        if cfg.train.keep_base.weight > 0:
            self.loss_inputs = KeepBaseInputs(self.inputs, cfg.train.keep_base)
        self.kl_terms: list[torch.Tensor] = []
        self.validator = build_validator(cfg, self.family, self.processor, self.infer_router)
        self.train_rank_losses = RankLosses()
        self.stopped = "max_steps"
        self.model = self.accelerator.prepare_model(model)
        if self.accelerator.is_main_process:
            self._start_logs()

    def _restore(self, model: torch.nn.Module) -> tuple[TrainerState, Path | None]:
        """The trainer state to start from, and the checkpoint it came from (None: a fresh start)."""
        ckpt = find_checkpoint(self.out) if self.resume else None
        if ckpt is None:
            return TrainerState(), None
        state, router_state = load_checkpoint(ckpt, model, self.optimizer, self.scheduler)
        if isinstance(self.train_router, RandomRouter) and router_state is not None:
            self.train_router.generator.set_state(router_state)
        return state, ckpt

    def _train_inputs(self, model: torch.nn.Module) -> TrainInputs:
        cfg = self.cfg
        if self.augmenter is not None:  # the loader decodes audio, tokenises labels; the batch is made here
            return AudioInputs(self.family, self.processor, self.split)
        if cfg.model.cache_encoder_layers and self.accelerator.num_processes > 1:
            raise ConfigError(
                "model.cache_encoder_layers: Whisper only, in a single process (GPUs need no cache)"
            )
        key = f"{cfg.model.source}|{cfg.model.audio_ctx}|{cfg.data.train_split}"
        return train_inputs(
            self.family, model, self.processor, self.split, cfg.model.cache_encoder_layers, key, self.progress
        )

    def _start_logs(self) -> None:
        """config.yaml and train_log.jsonl (``run_log``); the routers and a resume on stdout."""
        cfg = self.cfg
        start_logs(self.out, cfg, self.state.step if self.resumed_from is not None else None)
        print(
            f"[{cfg.name}] train router: {self.train_router.describe()}; inference router: {self.infer_router.describe()}"
        )
        if self.resumed_from is not None:
            print(f"[{cfg.name}] resumed from {self.resumed_from} at step {self.state.step}")
        elif self.resume:
            print(f"[{cfg.name}] no checkpoint in {self.out}: starting at step 0")

    def _augmented(self, planned: Any, step: int) -> Batch[int]:
        """The augmented, re-routed batch of ``planned``; the micro-batches of optimizer step
        ``step`` draw in turn from one generator seeded by (seed, step): a resumed run, which
        restarts at a step boundary, redraws them exactly. Each process of a multi-process
        run draws from its own seed."""
        if step != self._augment_step:
            seed = self.cfg.seed + 1_000_003 * self.accelerator.process_index
            self._augment_gen = step_generator(seed, step, self.accelerator.device)
            self._augment_step = step
        return self.augmenter(planned, self._augment_gen)

    def _validate(self) -> bool:
        """Validate, log, keep the best adapter; returns whether early stopping says stop.

        Every process validates the same rows, so all of them take the same decision."""
        state, es = self.state, self.cfg.train.early_stopping
        result = self.validator(self.accelerator.unwrap_model(self.model))
        value = result.wer if es.metric == "wer" and result.wer is not None else result.loss
        better = record_validation(state, value, es.min_delta)
        if self.accelerator.is_main_process:
            if better and es.patience is not None:  # save_adapter writes atomically
                save_adapter(self.accelerator.unwrap_model(self.model), self.out / BEST_ADAPTER)
            append_log(self.out, validation_entry(state, result))
        reason = stop_reason(state, es)
        if reason is not None:
            self.stopped = reason
        return reason is not None

    def _loader(self) -> DataLoader:
        """This process's micro-batches from where the trainer state stands, collated ahead."""
        cfg, world = self.cfg, self.accelerator.num_processes
        sampler = LengthBucketSampler(
            self.split.durations,
            cfg.train.batch_size * world,
            seed=cfg.seed,
            bucket_by_length=cfg.train.bucket_by_length,
        )
        plan = BatchPlan(
            self.split,
            sampler,
            self.train_router,
            cfg.train.batch_size,
            self.accelerator.process_index,
            start=(self.state.epoch, self.state.batch_in_epoch),
        )
        return train_loader(plan, self.inputs, cfg.train.num_workers)

    def _loss_step(self, batch: Batch[int]) -> torch.Tensor:
        """Mean loss of one collated micro-batch; call inside ``use_ranks(model, batch.ranks)``.
        With ``train.nested`` the rows also train at sampled ranks (``training.nested``)."""
        inputs = _to_device(batch.inputs, self.accelerator.device)
        nested = self.cfg.train.nested
        if nested.prob > 0:
            check_nested(nested, self.cfg.adapter.ranks)
            generator = nested_generator(
                self.cfg.seed, self.state.epoch, self.state.batch_in_epoch, self.accelerator.process_index
            )
            return nested_loss(
                self.loss_inputs, self.model, inputs, batch.ranks, self.cfg.adapter.ranks, nested, generator
            )
        return self.loss_inputs.loss(self.model, inputs)

    def train(self) -> Path:
        """Run to ``train.max_steps``; returns the directory of the final adapter."""
        cfg, state, accelerator = self.cfg, self.state, self.accelerator
        bar = tqdm(
            total=cfg.train.max_steps,
            initial=state.step,
            desc=cfg.name,
            disable=not (self.progress and accelerator.is_main_process),
        )
        accum = cfg.train.grad_accum
        micro = 0
        t_start = time.perf_counter() - state.train_time_s
        # Each global batch is this process's share of ``batch_size * world_size`` rows; an
        # optimizer step consumes ``grad_accum`` of them.
        graphs = graphed_steps(
            self.model, self.inputs.loss, accelerator, cfg.train, lambda m: print(f"[{cfg.name}] {m}")
        )
        self._augment_step = -1
        inner = accelerator.unwrap_model(self.model)
        throughput = self.throughput = Throughput()
        for planned in throughput.timed(self._loader() if state.step < cfg.train.max_steps else ()):
            if self.augmenter is None:
                batch = planned.batch
            else:
                with throughput.augmenting(accelerator.device):
                    batch = self._augmented(planned, state.step)
            state.epoch, state.batch_in_epoch = planned.epoch, planned.index + 1
            self.router_state = planned.router_state
            self.counts.update(batch.ranks.tolist())
            micro += 1
            sync = micro % accum == 0
            ctx = accelerator.no_sync(self.model) if not sync else contextlib.nullcontext()
            # The same forward + backward replayed from a CUDA graph where that is possible
            # (per-rank training losses are not captured then: a graph replay runs no hooks).
            loss = graphs.run(batch.inputs, batch.ranks) if graphs is not None else None
            if loss is None:
                with ctx, use_ranks(self.model, batch.ranks), capture_row_losses(inner) as captured:
                    loss = self._loss_step(batch) / accum
                    accelerator.backward(loss)
                self.train_rank_losses.add(batch.ranks, captured)
                if isinstance(self.loss_inputs, KeepBaseInputs) and self.loss_inputs.last_kl is not None:
                    self.kl_terms.append(self.loss_inputs.last_kl)
            self.losses.append(loss.detach() * accum)
            state.examples_seen += planned.n_global
            throughput.examples += planned.n_global
            if not sync:
                continue
            if cfg.train.max_grad_norm:
                accelerator.clip_grad_norm_(adapter_parameters(self.model), cfg.train.max_grad_norm)
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            state.step += 1
            self.steps_run += 1
            bar.update(1)
            if state.step % cfg.train.log_every == 0 or state.step == cfg.train.max_steps:
                mean_loss = float(torch.stack(self.losses).float().mean())
                bar.set_postfix_str(f"loss {mean_loss:.3f} | {_hist(self.counts)}")
                self._log(mean_loss, time.perf_counter() - t_start)
            with throughput.timing("validate_s"):
                stop = (
                    self.validator is not None and state.step % cfg.train.eval_every == 0 and self._validate()
                )
            checkpoint = cfg.train.save_every and state.step % cfg.train.save_every == 0
            if checkpoint and state.step < cfg.train.max_steps and not stop:
                self._save_checkpoint(time.perf_counter() - t_start)
            if stop or state.step >= cfg.train.max_steps:
                break
        bar.close()
        return self._finish(time.perf_counter() - t_start)

    def _log(self, mean_loss: float, elapsed_s: float) -> None:
        """One line of train_log.jsonl: the mean loss since the last line, lr, rank counts."""
        state = self.state
        if self.accelerator.is_main_process:
            entry = {
                "step": state.step,
                "loss": round(mean_loss, 5),
                "lr": self.scheduler.get_last_lr()[0],
                "epoch": state.epoch,
                "ranks": rank_histogram(self.counts),
                "elapsed_s": round(elapsed_s, 2),
                **self.throughput.interval(),
            }
            by_rank = self.train_rank_losses.mean_by_rank()
            if by_rank:  # token-mean loss of each rank's rows since the last line
                entry["loss_by_rank"] = by_rank
            if self.kl_terms:  # train.keep_base: the mean KL term since the last line
                entry["keep_base_kl"] = round(float(torch.stack(self.kl_terms).float().mean()), 5)
            append_log(self.out, entry)
        self.losses.clear()
        self.kl_terms.clear()
        self.train_rank_losses.mean_by_rank(reset=True)

    def _save_checkpoint(self, elapsed_s: float) -> None:
        self.state.train_time_s = elapsed_s
        self.state.rank_counts = dict(self.counts)
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            save_checkpoint(
                self.out, self.model, self.state, self.optimizer, self.scheduler, self.router_state
            )

    def _finish(self, train_time: float) -> Path:
        """The final adapter and train_summary.json."""
        state, accelerator = self.state, self.accelerator
        accelerator.wait_for_everyone()
        adapter_dir = self.out / "adapter"
        kept = self._kept()
        if accelerator.is_main_process:
            if kept["step"] != state.step:  # the best adapter of the run, not the last one
                load_adapter(accelerator.unwrap_model(self.model), self.out / BEST_ADAPTER)
            save_adapter(self.model, adapter_dir)
            params = count_parameters(self.model, dict(self.counts))
            summary = {
                "name": self.cfg.name,
                "steps": state.step,
                "examples_seen": state.examples_seen,
                "train_time_s": round(train_time, 2),
                "examples_per_s": round(state.examples_seen / max(train_time, 1e-9), 3),
                "processes": accelerator.num_processes,
                "train_rank_histogram": rank_histogram(self.counts),
                "adapter_params_total": params.total,
                "train_active_params_mean": params.active_mean,
                "train_router": self.train_router.describe(),
                "inference_router": self.infer_router.describe(),
                "resumed": None
                if self.resumed_from is None
                else {"from": str(self.resumed_from), "step": self.start_step},
                "steps_run": self.steps_run,
                **self.throughput.summary(train_time),
                "kept": kept,
                "stopped": self.stopped,
            }
            write_summary(self.out, summary)
        return adapter_dir

    def _kept(self) -> dict[str, Any]:
        """Which step's adapter the run keeps, and why."""
        return kept_step(self.state, self.cfg.train.early_stopping, self.validator is not None)


def train(cfg: RunConfig, resume: bool = False, progress: bool = True) -> Path:
    """Train the run described by ``cfg``; returns the directory of the final adapter.

    With ``resume`` the run continues from ``<output_dir>/checkpoint`` (a killed run ends
    with the same adapter as an uninterrupted one).
    """
    trainer = Trainer(cfg, resume, progress)
    trainer.setup()
    return trainer.train()
