"""Cost of Flexi-LoRA on a SmolLM2-135M-shaped causal LM: mixed ranks vs static LoRA.

    python benchmarks/text_step.py [--device cpu|cuda] [--batch 8] [--seq 170] [--repeats 5] [--decode-batch 32]

Times, side by side in one run and interleaved (so a change in the machine's load hits
every variant alike), one training step (forward + backward + AdamW, adapters on every
attention and MLP projection) and one decoding step (a token for every row, with a KV
cache of ``--seq`` positions) for: the base model alone, static LoRA at ranks 4 and 8,
and Flexi-LoRA with ranks {2, 4, 8} at the threshold router's shares (a mean of 4) with
the rows grouped by rank (as the training loop and ``eval`` order them) and in arrival
order. The model is random-initialised with SmolLM2-135M's shapes (speed does not depend
on the weights' values); prints medians and each variant's ratio to static rank 4.
Absolute seconds depend on the machine and its load; the ratios are the result.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import statistics
import time

import torch

from flexispeech import FlexiLoraConfig, inject, use_ranks
from flexispeech.bench.steps import sync as device_sync
from flexispeech.lora.plans import rank_sort_order

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# SmolLM2-135M (HuggingFaceTB/SmolLM2-135M-Instruct config.json)
SHAPE = dict(
    vocab_size=49152,
    hidden_size=576,
    intermediate_size=1536,
    num_hidden_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
    max_position_embeddings=2048,
    tie_word_embeddings=True,
)
SHARES = {2: 0.44, 4: 0.33, 8: 0.23}  # the math recipe's threshold router on its test split: mean rank ~4


def mixed_ranks(n: int) -> torch.Tensor:
    """``n`` ranks in the router's shares, interleaved as rows arrive (unsorted)."""
    counts = {r: round(s * n) for r, s in SHARES.items()}
    counts[2] += n - sum(counts.values())
    pool = [r for r, c in counts.items() for _ in range(c)]
    order = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    return torch.tensor(pool)[order]


def build(ranks: tuple[int, ...] | None, dropout: float = 0.05) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**SHAPE))
    if ranks is None:
        for p in model.parameters():
            p.requires_grad_(False)
    else:
        inject(model, FlexiLoraConfig(ranks=ranks, target_modules=TARGETS, alpha=16.0, dropout=dropout))
    return model


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--batch", type=int, default=8, help="training rows (default: 8, the math recipe's CPU batch)"
    )
    parser.add_argument(
        "--seq", type=int, default=170, help="tokens per row (default: 170, a math prompt + solution)"
    )
    parser.add_argument("--decode-batch", type=int, default=32, help="rows per decoding step (default: 32)")
    parser.add_argument(
        "--repeats", type=int, default=5, help="timed rounds (default: 5; one warm-up round first)"
    )
    parser.add_argument(
        "--dropout", type=float, default=0.05, help="adapter dropout (default: 0.05, the text recipes')"
    )
    parser.add_argument(
        "--device", default="cpu", help="cpu or cuda (default: cpu); fp32 either way, as the recipes train"
    )
    args = parser.parse_args()
    device = torch.device(args.device)

    # CUDA kernels run asynchronously: a step's time is only known once the device is idle.
    def sync() -> None:
        device_sync(args.device)

    base = build(None).to(device)
    flexi = build((2, 4, 8), args.dropout).to(device)
    static = {r: build((r,), args.dropout).to(device) for r in (4, 8)}
    mixed = mixed_ranks(args.batch).to(device)
    mixed_decode = mixed_ranks(args.decode_batch).to(device)
    variants = {  # name -> (model, training ranks, decoding ranks); None = no use_ranks block
        "base model (no adapter)": (base, None, None),
        "static LoRA r=4": (
            static[4],
            torch.full((args.batch,), 4, device=device),
            torch.full((args.decode_batch,), 4, device=device),
        ),
        "static LoRA r=8": (
            static[8],
            torch.full((args.batch,), 8, device=device),
            torch.full((args.decode_batch,), 8, device=device),
        ),
        "Flexi {2,4,8}, mean 4, grouped by rank": (
            flexi,
            mixed[rank_sort_order(mixed)],
            mixed_decode[rank_sort_order(mixed_decode)],
        ),
        "Flexi {2,4,8}, mean 4, arrival order": (flexi, mixed, mixed_decode),
    }
    ids = torch.randint(
        0, SHAPE["vocab_size"], (args.batch, args.seq), generator=torch.Generator().manual_seed(1)
    ).to(device)
    labels = ids.clone()
    labels[:, : args.seq // 2] = -100  # the prompt half carries no loss
    opts = {
        name: torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-4)
        for name, (m, r, _) in variants.items()
        if r is not None
    }

    # One decoding step: the next token of every row after a prefilled cache of --seq positions.
    dec_ids = torch.randint(
        0, SHAPE["vocab_size"], (args.decode_batch, args.seq), generator=torch.Generator().manual_seed(2)
    ).to(device)
    caches = {}
    for name, (m, _, dranks) in variants.items():
        with torch.no_grad(), use_ranks(m, dranks) if dranks is not None else contextlib.nullcontext():
            caches[name] = m(input_ids=dec_ids, use_cache=True).past_key_values

    def train_step(name: str) -> float | None:
        m, ranks, _ = variants[name]
        if ranks is None:
            return None  # nothing to train: the base model is the decoding floor only
        m.train()
        sync()
        t0 = time.perf_counter()
        with use_ranks(m, ranks):
            out = m(input_ids=ids, labels=labels)
        out.loss.backward()
        opts[name].step()
        opts[name].zero_grad()
        sync()
        return time.perf_counter() - t0

    def decode_step(name: str) -> float:
        m, _, dranks = variants[name]
        m.eval()
        nxt = dec_ids[:, -1:]
        cache = copy.deepcopy(caches[name])  # the step appends to its cache: each step gets a fresh copy
        sync()
        t0 = time.perf_counter()
        with torch.no_grad(), use_ranks(m, dranks) if dranks is not None else contextlib.nullcontext():
            m(input_ids=nxt, past_key_values=cache, use_cache=True)
        sync()
        return time.perf_counter() - t0

    train_t = {n: [] for n in variants}
    dec_t = {n: [] for n in variants}
    for round_ in range(args.repeats + 1):
        for name in variants:
            t, d = train_step(name), statistics.median(decode_step(name) for _ in range(9))
            if round_:  # round 0 warms up
                dec_t[name].append(d)
                if t is not None:
                    train_t[name].append(t)
        print(f"round {round_} done", flush=True)
    ref_t, ref_d = statistics.median(train_t["static LoRA r=4"]), statistics.median(dec_t["static LoRA r=4"])
    where = (
        f"{torch.cuda.get_device_name(device)}"
        if device.type == "cuda"
        else f"cpu, {torch.get_num_threads()} threads"
    )
    print(
        f"\n| variant ({where}; train batch {args.batch} × {args.seq} tokens; "
        f"decode batch {args.decode_batch}) | train step s | × static r=4 | decode step ms | × static r=4 |"
    )
    print("| --- | ---: | ---: | ---: | ---: |")
    for name in variants:
        d = statistics.median(dec_t[name])
        t = statistics.median(train_t[name]) if train_t[name] else None
        train_cols = "– | –" if t is None else f"{t:.2f} | {t / ref_t:.2f}"
        print(f"| {name} | {train_cols} | {1000 * d:.0f} | {d / ref_d:.2f} |")


if __name__ == "__main__":
    main()
