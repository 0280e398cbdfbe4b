"""Batched greedy Whisper decoding with a preallocated KV cache, replayed as a CUDA graph.

Why not transformers' ``generate``: for a small model on a GPU, a decoding step is bound
by the host (logits processors, stopping criteria, cache bookkeeping and hundreds of kernel
launches), not by the GPU's work; signals, calibration and evaluation decode tens of
thousands of utterances, so this is where a study's time went. Here one step (embedding,
every decoder layer against a fixed-size self-attention cache and the precomputed
cross-attention keys and values, the output projection, Whisper's token suppression and
the argmax) is one function of static tensors: on a GPU it is captured once per batch
size and replayed with one launch per token.

It reproduces what ``generate(num_beams=1, return_timestamps=False)`` does for audio
within the encoder window: the prefix ``<|startoftranscript|>`` (``<|en|><|transcribe|>``
for multilingual checkpoints) ``<|notimestamps|>``, ``suppress_tokens`` at every step,
``begin_suppress_tokens`` at the first generated token, greedy argmax, stop at
``<|endoftext|>`` or after ``max_new_tokens``. The tests hold it to ``generate``'s tokens.

The same pass yields the perplexity proxy: the log-probability and entropy of each chosen
token's distribution (the unsuppressed logits, as a teacher-forced pass over the
transcript would give them), so the proxy needs no second pass.

Per-example ranks: the layers read the ranks in force (``use_ranks``) as in any forward;
the captured graph reads them from a device tensor that is refreshed before each batch.
"""

from __future__ import annotations

import logging
import os
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import nn

from flexispeech.lora.layer import FlexiLoraLinear
from flexispeech.lora.ranks import current_ranks, use_ranks

log = logging.getLogger(__name__)

GRAPHS_KEPT = 2
"""Captured batch sizes kept per model (a split's full batches and its last, shorter one)."""
SYNC_EVERY = 16
"""Steps between host checks of whether every row has finished (each check is a sync)."""


@dataclass
class GreedyOutput:
    """What ``greedy_decode`` returns for a batch of B clips.

    sequences: per row, the prefix and the generated tokens up to and including the first
        ``<|endoftext|>`` (int64 on the CPU).
    nll_sum, entropy_sum: [B] float32 (CPU), summed over the generated tokens: negative
        log-probability of each chosen token, entropy of its next-token distribution.
    n_tokens: [B] int64, the generated tokens counted in those sums (>= 1).
    """

    sequences: list[torch.Tensor]
    nll_sum: torch.Tensor
    entropy_sum: torch.Tensor
    n_tokens: torch.Tensor

    @property
    def proxy(self) -> torch.Tensor:
        """Mean negative log-probability per generated token, [B] (the proxy signal)."""
        return self.nll_sum / self.n_tokens.clamp(min=1)

    @property
    def proxy_entropy(self) -> torch.Tensor:
        """Mean next-token entropy per generated token, [B]."""
        return self.entropy_sum / self.n_tokens.clamp(min=1)


def prefix_ids(model: nn.Module) -> list[int]:
    """The decoder prefix ``generate`` forces for English transcription without timestamps."""
    gen = model.generation_config
    ids = [int(gen.decoder_start_token_id)]
    if getattr(gen, "is_multilingual", False):
        ids += [int(gen.lang_to_id["<|en|>"]), int(gen.task_to_id["transcribe"])]
    ids.append(int(gen.no_timestamps_token_id))
    return ids


class _State:
    """The static tensors of one decoding batch shape: the caches, the step's inputs and
    its accumulators. Shapes: B rows, H heads, Dh head size, L cache length, S encoder
    positions, V vocabulary."""

    def __init__(
        self, model: nn.Module, batch: int, cache_len: int, enc_len: int, device: torch.device
    ) -> None:
        cfg = model.config
        dtype = model.dtype
        heads = cfg.decoder_attention_heads
        head_dim = cfg.d_model // heads
        layers = cfg.decoder_layers
        self.self_k = torch.zeros(layers, batch, heads, cache_len, head_dim, dtype=dtype, device=device)
        self.self_v = torch.zeros_like(self.self_k)
        self.cross_k = torch.zeros(layers, batch, heads, enc_len, head_dim, dtype=dtype, device=device)
        self.cross_v = torch.zeros_like(self.cross_k)
        self.token = torch.zeros(batch, dtype=torch.long, device=device)  # the step's input token
        self.pos = torch.zeros(1, dtype=torch.long, device=device)  # its position
        self.first = torch.zeros(1, dtype=torch.bool, device=device)  # first generated token?
        self.scoring = torch.zeros(1, dtype=torch.bool, device=device)  # a generated token (not prefix)?
        self.done = torch.zeros(batch, dtype=torch.bool, device=device)
        self.chosen = torch.zeros(batch, dtype=torch.long, device=device)  # the step's output token
        self.nll = torch.zeros(batch, dtype=torch.float32, device=device)
        self.entropy = torch.zeros(batch, dtype=torch.float32, device=device)
        self.count = torch.zeros(batch, dtype=torch.long, device=device)
        self.positions = torch.arange(cache_len, device=device)
        vocab = cfg.vocab_size
        gen = model.generation_config
        self.suppress = _token_mask(getattr(gen, "suppress_tokens", None), vocab, device)
        self.begin_suppress = _token_mask(getattr(gen, "begin_suppress_tokens", None), vocab, device)
        self.eos = int(gen.eos_token_id)
        self.ranks: torch.Tensor | None = None  # the graph's copy of the ranks in force
        self.graph: torch.cuda.CUDAGraph | None = None

    def reset(self) -> None:
        for t in (self.self_k, self.self_v, self.done, self.nll, self.entropy, self.count, self.pos):
            t.zero_()


def _token_mask(tokens: list[int] | None, vocab: int, device: torch.device) -> torch.Tensor:
    mask = torch.zeros(vocab, dtype=torch.bool, device=device)
    if tokens:
        mask[torch.tensor([t for t in tokens if 0 <= t < vocab], dtype=torch.long, device=device)] = True
    return mask


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """[B, T, D] -> [B, H, T, D/H]."""
    b, t, d = x.shape
    return x.view(b, t, heads, d // heads).transpose(1, 2)


def _fill_cross(model: nn.Module, state: _State, encoded: torch.Tensor) -> None:
    """Cross-attention keys and values of every decoder layer from the encoder output
    ``encoded`` [B, S, D] (computed once per batch, at the ranks in force)."""
    heads = model.config.decoder_attention_heads
    for i, layer in enumerate(model.model.decoder.layers):
        state.cross_k[i].copy_(_heads(layer.encoder_attn.k_proj(encoded), heads))
        state.cross_v[i].copy_(_heads(layer.encoder_attn.v_proj(encoded), heads))


def _step(model: nn.Module, state: _State) -> None:
    """One decoding step on the static tensors of ``state``: reads ``token`` at ``pos``,
    writes the next token to ``chosen`` and adds to the proxy sums. No host sync."""
    decoder = model.model.decoder
    heads = model.config.decoder_attention_heads
    scale = (model.config.d_model // heads) ** -0.5
    valid = state.positions <= state.pos  # [L]: the cache positions written so far
    h = decoder.embed_tokens(state.token[:, None]) + decoder.embed_positions.weight.index_select(0, state.pos)
    for i, layer in enumerate(decoder.layers):
        x = layer.self_attn_layer_norm(h)
        attn = layer.self_attn
        q = _heads(attn.q_proj(x), heads)
        state.self_k[i].index_copy_(2, state.pos, _heads(attn.k_proj(x), heads))
        state.self_v[i].index_copy_(2, state.pos, _heads(attn.v_proj(x), heads))
        out = nn.functional.scaled_dot_product_attention(
            q, state.self_k[i], state.self_v[i], attn_mask=valid[None, None, None, :], scale=scale
        )
        h = h + attn.out_proj(out.transpose(1, 2).reshape(h.shape))
        x = layer.encoder_attn_layer_norm(h)
        cross = layer.encoder_attn
        q = _heads(cross.q_proj(x), heads)
        out = nn.functional.scaled_dot_product_attention(q, state.cross_k[i], state.cross_v[i], scale=scale)
        h = h + cross.out_proj(out.transpose(1, 2).reshape(h.shape))
        x = layer.final_layer_norm(h)
        h = h + layer.fc2(layer.activation_fn(layer.fc1(x)))
    logits = model.proj_out(decoder.layer_norm(h))[:, 0].float()  # [B, V]
    logp = torch.log_softmax(logits, dim=-1)
    suppress = state.suppress | (state.begin_suppress & state.first)
    chosen = logits.masked_fill(suppress, float("-inf")).argmax(-1)
    live = state.scoring & ~state.done
    nll = -logp.gather(1, chosen[:, None])[:, 0]
    entropy = -(logp.exp() * logp).sum(-1)
    state.nll.add_(torch.where(live, nll, 0.0))
    state.entropy.add_(torch.where(live, entropy, 0.0))
    state.count.add_(live.long())
    state.done.logical_or_(live & (chosen == state.eos))
    state.chosen.copy_(chosen)


def _graphs_usable(device: torch.device, graphs: bool | None) -> bool:
    """Graphs on a CUDA device unless asked not to (``graphs=False``, or for every caller
    ``FLEXISPEECH_CUDA_GRAPHS=0`` in the environment)."""
    if graphs is None:
        graphs = os.environ.get("FLEXISPEECH_CUDA_GRAPHS", "1") != "0"
    return device.type == "cuda" and graphs


def _cache(model: nn.Module) -> dict[tuple, _State]:
    return model.__dict__.setdefault("_flexispeech_greedy", {})


def _state_for(
    model: nn.Module, batch: int, cache_len: int, enc_len: int, device: torch.device, graphs: bool
) -> _State:
    """A fresh state (eager), or the captured one for this shape (graphs)."""
    if not graphs:
        return _State(model, batch, cache_len, enc_len, device)
    ranks = current_ranks(model)
    key = (batch, cache_len, enc_len, model.dtype, None if ranks is None else tuple(ranks.shape))
    states = _cache(model)
    state = states.pop(key, None)
    if state is None:
        while len(states) >= GRAPHS_KEPT:  # drop the oldest capture (and its memory)
            states.pop(next(iter(states)))
        state = _State(model, batch, cache_len, enc_len, device)
        if ranks is not None:
            state.ranks = ranks.clone()
    states[key] = state  # most recently used last
    return state


def adapter_layers(model: nn.Module) -> list[FlexiLoraLinear]:
    """The Flexi-LoRA layers of ``model``; none for a model without adapter (the base model
    of the signals pass), which is captured as it is."""
    return [m for m in model.modules() if isinstance(m, FlexiLoraLinear)]


def _capture(model: nn.Module, state: _State) -> None:
    """Capture ``_step`` on ``state`` as a CUDA graph, the layers on their graph-safe path."""
    layers = adapter_layers(model)
    paths = [layer.compute_path for layer in layers]
    try:
        for layer in layers:
            layer.compute_path = "static"
        ctx = use_ranks(model, state.ranks) if state.ranks is not None else nullcontext()
        with ctx:
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(2):  # kernels compile and libraries pick algorithms before capture
                    _step(model, state)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                _step(model, state)
        state.graph = graph
    finally:
        for layer, path in zip(layers, paths):
            layer.compute_path = path


def greedy_decode(
    model: nn.Module,
    features: torch.Tensor,
    max_new_tokens: int,
    graphs: bool | None = None,
) -> GreedyOutput:
    """Greedy transcripts of a batch of clips that fit the encoder window.

    Args:
        model: ``WhisperForConditionalGeneration`` (with or without Flexi-LoRA adapters; the
            ranks in force apply, ``use_ranks`` / ``adapter_off``), in eval mode.
        features: log-mel [B, n_mels, frames] with ``frames`` = the encoder window.
        max_new_tokens: the most tokens generated after the prefix.
        graphs: replay each step from a CUDA graph (None: on a CUDA device, unless the
            environment sets ``FLEXISPEECH_CUDA_GRAPHS=0``). The graph of a batch size is
            captured on first use and kept on the model.

    Returns:
        ``GreedyOutput``: the token sequences and the proxy sums of each row.
    """
    device = next(model.parameters()).device
    prefix = prefix_ids(model)
    use_graphs = _graphs_usable(device, graphs)
    batch = features.shape[0]
    limit = int(model.config.max_target_positions)
    steps = len(prefix) - 1 + max_new_tokens
    if steps >= limit:
        raise ValueError(
            f"max_new_tokens={max_new_tokens}: prefix and tokens pass the decoder's {limit} positions"
        )
    # One cache size for every budget when graphed (one capture per batch size).
    cache_len = limit if use_graphs else steps + 1
    with torch.no_grad():
        encoded = model.model.encoder(features.to(device, dtype=model.dtype)).last_hidden_state
        state = _state_for(model, batch, cache_len, encoded.shape[1], device, use_graphs)
        state.reset()
        _fill_cross(model, state, encoded)
        del encoded
        if use_graphs:
            ranks = current_ranks(model)
            if state.ranks is not None and ranks is not None:
                state.ranks.copy_(ranks)
            if state.graph is None:
                try:
                    _capture(model, state)
                except Exception as err:  # noqa: BLE001 - a capture problem costs speed, never the decoding
                    # (e.g. an op that syncs); eager decoding gives the same tokens, so go on
                    # with it, saying why, rather than stop a pass over thousands of clips.
                    log.warning(
                        "greedy decoding: CUDA graph capture failed (%s: %s); decoding eagerly",
                        type(err).__name__,
                        err,
                    )
                    _cache(model).clear()
                    return greedy_decode(model, features, max_new_tokens, graphs=False)
                state.reset()
        out = torch.empty(batch, steps + 1, dtype=torch.long, device=device)
        out[:, : len(prefix)] = torch.tensor(prefix, device=device)
        state.token.fill_(prefix[0])
        for t in range(steps):
            generating = t >= len(prefix) - 1
            state.pos.fill_(t)
            state.first.fill_(t == len(prefix) - 1)
            state.scoring.fill_(generating)
            if state.graph is not None:
                state.graph.replay()
            else:
                _step(model, state)
            if generating:
                out[:, t + 1] = state.chosen
                state.token.copy_(state.chosen)
                if (t + 1 - len(prefix)) % SYNC_EVERY == SYNC_EVERY - 1 and bool(state.done.all()):
                    steps = t + 1
                    break
            else:
                state.token.fill_(prefix[t + 1])
        out = out[:, : steps + 1].cpu()
        sequences = []
        for row in out:
            hits = (row[len(prefix) :] == state.eos).nonzero()
            end = len(prefix) + int(hits[0]) + 1 if len(hits) else len(row)
            sequences.append(row[:end].clone())
        return GreedyOutput(sequences, state.nll.cpu(), state.entropy.cpu(), state.count.cpu())
