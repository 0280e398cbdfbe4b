"""One training loop for every family: Flexi-LoRA (or static LoRA) on a corpus split.

Built on ``accelerate``: the same code runs on one CPU, one GPU, or several processes
under ``accelerate launch`` / ``torchrun`` (DDP). Each optimizer step consumes one *global*
batch of ``batch_size * world_size * grad_accum`` examples in an order fixed by the seed,
so a multi-process run sees the same examples per step as a single-process run with the
same global batch. Ranks come from the run's router on each batch's signals, exactly as
at inference.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import torch
import yaml
from tqdm.auto import tqdm

from flexispeech.atomic import write_file
from flexispeech.training.checkpoint import TrainerState, find_checkpoint, load_checkpoint, save_checkpoint
from flexispeech.training.config import RunConfig, to_dict
from flexispeech.data.speech import CorpusSplit, LengthBucketSampler, make_collate
from flexispeech.errors import ConfigError
from flexispeech.lora.config import FlexiLoraConfig
from flexispeech.lora.inject import adapter_parameters, attach_router, inject, use_ranks
from flexispeech.lora.io import save_adapter
from flexispeech.lora.plans import rank_sort_order
from flexispeech.lora.router import RandomRouter
from flexispeech.lora.stats import count_parameters
from flexispeech.models.family import get_family
from flexispeech.models.family import load_model as load_family_model
from flexispeech.models.whisper import POSITIONS_PER_SECOND
from flexispeech.models.whisper_prefix import encode_prefix, frozen_prefix_pattern, loss_from_prefix
from flexispeech.training.routing import build_routers
from flexispeech.data.text import open_split


def _hist(counts: Counter | dict[int, int]) -> str:
    return " ".join(f"r{r}:{n}" for r, n in sorted(counts.items()))


def _to_device(inputs: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}


def _scheduler(cfg: RunConfig, optimizer: torch.optim.Optimizer) -> Any:
    from transformers import get_scheduler

    names = {"linear": "linear", "cosine": "cosine", "constant": "constant_with_warmup"}
    if cfg.train.schedule not in names:
        raise ConfigError(f"train.schedule: expected one of {sorted(names)}, got {cfg.train.schedule!r}")
    return get_scheduler(names[cfg.train.schedule], optimizer, cfg.train.warmup_steps, cfg.train.max_steps)


def load_model(cfg: RunConfig, device: str | torch.device = "cpu") -> tuple[Any, Any, Any]:
    """The run's family, base model and processor."""
    family = get_family(cfg.model.family)
    model, processor = load_family_model(family, cfg.model.source, str(device), cfg.model.audio_ctx)
    return family, model, processor


def adapter_config(cfg: RunConfig, family: Any) -> FlexiLoraConfig:
    """The FlexiLoraConfig of a run (with the facts needed to reload it in metadata)."""
    a = cfg.adapter
    targets: tuple[str, ...] | str = tuple(a.target_modules or family.default_targets)
    if cfg.model.cache_encoder_layers:
        targets = frozen_prefix_pattern(targets, cfg.model.cache_encoder_layers)
    return a.to_lora(
        target_modules=targets,
        metadata={
            "base_model": cfg.model.source,
            "family": cfg.model.family,
            "audio_ctx": cfg.model.audio_ctx,
            "run": cfg.name,
            "routing": cfg.routing.mode,
        },
    )


def train(cfg: RunConfig, resume: bool = False, progress: bool = True) -> Path:
    """Train the run described by ``cfg``; returns the directory of the final adapter.

    With ``resume`` the run continues from ``<output_dir>/checkpoint`` (a killed run ends
    with the same adapter as an uninterrupted one).
    """
    from accelerate import Accelerator, DistributedDataParallelKwargs
    from accelerate.utils import set_seed

    out = Path(cfg.output_dir)
    # Rows at rank 0 leave adapter parameters unused in some steps: DDP must allow that.
    accelerator = Accelerator(
        mixed_precision=cfg.train.mixed_precision,
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )
    set_seed(cfg.seed)
    family, model, processor = load_model(cfg, accelerator.device)

    max_duration = cfg.data.max_duration
    if cfg.model.family == "whisper" and cfg.model.audio_ctx:
        window = cfg.model.audio_ctx / POSITIONS_PER_SECOND
        max_duration = window if max_duration is None else min(max_duration, window)
    split = open_split(cfg.data.corpus, cfg.data.train_split, max_duration, cfg.data.max_train_examples, cfg.seed, cfg.data.target)
    signals = split.all_signals()
    uses_learned = cfg.routing.mode == "learned" or (cfg.routing.mode == "inconsistent" and cfg.routing.inference_router == "learned")
    difficulty = split.column(cfg.routing.difficulty) if uses_learned else None
    train_router, infer_router = build_routers(cfg.routing, tuple(cfg.adapter.ranks), signals, difficulty, cfg.seed)

    inject(model, adapter_config(cfg, family))
    attach_router(model, infer_router)
    model.train()
    optimizer = torch.optim.AdamW(adapter_parameters(model), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    scheduler = _scheduler(cfg, optimizer)

    world, rank = accelerator.num_processes, accelerator.process_index
    local_bs = cfg.train.batch_size
    sampler = LengthBucketSampler(split.durations, local_bs * world, seed=cfg.seed, bucket_by_length=cfg.train.bucket_by_length)
    collate = make_collate(family, processor, train=True)

    state = TrainerState()
    ckpt = find_checkpoint(out) if resume else None
    if ckpt is not None:
        state, router_state = load_checkpoint(ckpt, model, optimizer, scheduler)
        if isinstance(train_router, RandomRouter) and router_state is not None:
            train_router.generator.set_state(router_state)
    prefix_cache = None
    if cfg.model.cache_encoder_layers:
        if cfg.model.family != "whisper" or world > 1:
            raise ConfigError("model.cache_encoder_layers: Whisper only, in a single process (GPUs need no cache)")
        key = f"{cfg.model.source}|{cfg.model.audio_ctx}|{cfg.data.train_split}"
        prefix_cache = build_prefix_cache(model, family, processor, split, cfg.model.cache_encoder_layers, progress, key)
    model = accelerator.prepare_model(model)

    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
        log_path = out / "train_log.jsonl"
        kept = [ln for ln in log_path.read_text().splitlines() if json.loads(ln)["step"] <= state.step] if (ckpt and log_path.exists()) else []
        log_path.write_text("".join(ln + "\n" for ln in kept))
        print(f"[{cfg.name}] train router: {train_router.describe()}; inference router: {infer_router.describe()}")
    bar = tqdm(total=cfg.train.max_steps, initial=state.step, desc=cfg.name, disable=not (progress and accelerator.is_main_process))
    counts: Counter = Counter({int(k): v for k, v in state.rank_counts.items()})
    losses: list[float] = []
    accum = cfg.train.grad_accum
    micro = 0
    t_start = time.perf_counter() - state.train_time_s

    while state.step < cfg.train.max_steps:
        batches = sampler.batches(state.epoch)
        while state.batch_in_epoch < len(batches) and state.step < cfg.train.max_steps:
            global_idx = batches[state.batch_in_epoch]
            local_idx = global_idx[rank * local_bs : (rank + 1) * local_bs]
            state.batch_in_epoch += 1
            if not local_idx:
                continue
            signals = {k: torch.tensor([split.signals(i)[k] for i in local_idx]) for k in split.signal_names}
            ranks = train_router(signals)
            # Rows of equal rank side by side (a token-mean loss does not depend on row
            # order): the CPU's segmented path then runs one truncated matmul per rank.
            by_rank = rank_sort_order(ranks)
            local_idx, ranks = [local_idx[j] for j in by_rank.tolist()], ranks[by_rank]
            counts.update(ranks.tolist())
            micro += 1
            sync = micro % accum == 0
            ctx = accelerator.no_sync(model) if not sync else contextlib.nullcontext()
            with ctx, use_ranks(model, ranks):
                if prefix_cache is None:
                    inputs = collate([split[i] for i in local_idx])["inputs"]
                    loss = family.loss(model, _to_device(inputs, accelerator.device)) / accum
                else:
                    labels = family.labels(processor, [split.rows[i]["text"] for i in local_idx])
                    prefix = torch.stack([prefix_cache[i] for i in local_idx])
                    loss = loss_from_prefix(model, prefix, labels, cfg.model.cache_encoder_layers) / accum
                accelerator.backward(loss)
            losses.append(float(loss.detach()) * accum)
            state.examples_seen += len(global_idx)
            if not sync:
                continue
            if cfg.train.max_grad_norm:
                accelerator.clip_grad_norm_(adapter_parameters(model), cfg.train.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            state.step += 1
            bar.update(1)
            mean_loss = sum(losses) / len(losses)
            bar.set_postfix_str(f"loss {mean_loss:.3f} | {_hist(counts)}")
            if accelerator.is_main_process and (state.step % cfg.train.log_every == 0 or state.step == cfg.train.max_steps):
                entry = {"step": state.step, "loss": round(mean_loss, 5), "lr": scheduler.get_last_lr()[0], "epoch": state.epoch,
                         "ranks": {str(k): v for k, v in sorted(counts.items())}, "elapsed_s": round(time.perf_counter() - t_start, 2)}
                with (out / "train_log.jsonl").open("a") as f:
                    f.write(json.dumps(entry) + "\n")
                losses.clear()
            if state.step % cfg.train.save_every == 0 and state.step < cfg.train.max_steps:
                state.train_time_s = time.perf_counter() - t_start
                state.rank_counts = dict(counts)
                accelerator.wait_for_everyone()
                if accelerator.is_main_process:
                    router_state = train_router.generator.get_state() if isinstance(train_router, RandomRouter) else None
                    save_checkpoint(out, model, state, optimizer, scheduler, router_state)
        if state.batch_in_epoch >= len(batches):
            state.epoch += 1
            state.batch_in_epoch = 0
    bar.close()

    train_time = time.perf_counter() - t_start
    accelerator.wait_for_everyone()
    adapter_dir = out / "adapter"
    if accelerator.is_main_process:
        save_adapter(model, adapter_dir)
        params = count_parameters(model, dict(counts))
        summary = {
            "name": cfg.name,
            "steps": state.step,
            "examples_seen": state.examples_seen,
            "train_time_s": round(train_time, 2),
            "examples_per_s": round(state.examples_seen / max(train_time, 1e-9), 3),
            "processes": world,
            "train_rank_histogram": {str(k): v for k, v in sorted(counts.items())},
            "adapter_params_total": params.total,
            "train_active_params_mean": params.active_mean,
            "train_router": train_router.describe(),
            "inference_router": infer_router.describe(),
        }
        (out / "train_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return adapter_dir


def build_prefix_cache(
    model: torch.nn.Module,
    family: Any,
    processor: Any,
    split: CorpusSplit,
    n_layers: int,
    progress: bool,
    key: str = "",
    batch_size: int = 16,
) -> list[torch.Tensor]:
    """Encoder-prefix states [positions, d_model] of every training row, computed once.

    They are also stored under ``<corpus>/cache/encoder/`` (safetensors, named by a hash
    of ``key``, the layer count and the row ids), so the other runs of a recipe on the
    same corpus and model load them instead of recomputing.
    """
    import hashlib

    from safetensors.torch import load_file, save_file

    digest = hashlib.sha1(f"{key}|{n_layers}|{[r['id'] for r in split.rows]}".encode()).hexdigest()[:16]
    path = split.corpus_dir / "cache" / "encoder" / f"{digest}.safetensors"
    if path.is_file():
        return list(load_file(str(path))["prefix"])
    collate = make_collate(family, processor, train=False)
    cache: list[torch.Tensor] = []
    for start in tqdm(range(0, len(split), batch_size), desc="encoder cache", unit="batch", disable=not progress):
        inputs = collate([split[i] for i in range(start, min(start + batch_size, len(split)))])["inputs"]
        cache += list(encode_prefix(model, inputs["input_features"], n_layers).cpu())
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix = {"prefix": torch.stack(cache).contiguous()}
    write_file(path, lambda tmp: save_file(prefix, str(tmp)))  # a killed run never leaves a truncated cache
    return cache
