"""How well the novelty gate's input separates real recordings from the synthetic corpus.

The novelty gate (``lora.gate``) serves rank 0 to inputs whose pooled base-encoder
embedding is far from the training split's. In the GPU study it caught about two thirds of
the real recordings, and the rest, let through, were made worse by the adapters. This
script asks whether another summary of the same encoder pass would catch more: the mean
over the utterance's positions (what the gate uses), the standard deviation, both, and a
nearest-neighbour distance instead of the PPCA Mahalanobis distance. For each it fits on a
sample of the training split, sets the threshold at ``--quantile`` of the validation
split's scores (as ``flexispeech gate`` does), and prints the share of real recordings and
of synthetic test utterances flagged novel, and the AUC of real against validation.

    python benchmarks/gate_features.py --synthetic data/synthetic-default --real data/real
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from flexispeech.data.speech import CorpusSplit
from flexispeech.lora.gate import NoveltyGate
from flexispeech.models.whisper import FAMILY
from flexispeech.signals.embedding import valid_positions


@torch.no_grad()
def pooled_statistics(
    model: torch.nn.Module, processor, split: CorpusSplit, rows: list[int], batch_size: int, desc: str
) -> dict[str, np.ndarray]:
    """Mean and standard deviation [N, d] of the base encoder's output over each row's valid
    positions (the gate's embedding is the mean)."""
    from flexispeech.models.whisper import FRAMES_PER_POSITION, encoder_positions

    positions = encoder_positions(model)
    means, stds = [], []
    for start in tqdm(range(0, len(rows), batch_size), desc=f"encoder {desc}", unit="batch"):
        batch = FAMILY.collate(processor, [split[i] for i in rows[start : start + batch_size]], train=False)
        hidden = model.get_encoder()(batch["input_features"][:, :, : positions * FRAMES_PER_POSITION])
        hidden = hidden.last_hidden_state.float()  # [B, P, d]
        valid = valid_positions(batch["num_frames"], positions)
        mask = (torch.arange(positions)[None, :] < valid[:, None]).float()[:, :, None]
        mean = (hidden * mask).sum(1) / valid[:, None]
        var = ((hidden - mean[:, None]) ** 2 * mask).sum(1) / valid[:, None]
        means.append(mean.numpy())
        stds.append(var.sqrt().numpy())
    return {"mean": np.concatenate(means), "std": np.concatenate(stds)}


def features(stats: dict[str, np.ndarray], kind: str) -> np.ndarray:
    """[N, d'] gate input of kind ``mean``, ``std`` or ``mean+std``."""
    return np.concatenate([stats[k] for k in kind.split("+")], axis=1)


def knn_distance(x: np.ndarray, train: np.ndarray, k: int) -> np.ndarray:
    """Cosine distance [N] from each row of ``x`` to its k-th nearest row of ``train``."""
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    train = train / np.linalg.norm(train, axis=1, keepdims=True)
    return 1.0 - np.sort(x @ train.T, axis=1)[:, -k]


def separation(
    train: np.ndarray, val: np.ndarray, test: np.ndarray, real: np.ndarray, score, quantile: float
):
    """(real flagged, test flagged, AUC of real against validation) for a novelty ``score``
    fit on ``train`` (``score(train) -> fn(x) -> [N]``)."""
    fn = score(train)
    s_val, s_test, s_real = fn(val), fn(test), fn(real)
    threshold = np.quantile(s_val, quantile)
    auc = float((s_real[:, None] > s_val[None, :]).mean())
    return float((s_real > threshold).mean()), float((s_test > threshold).mean()), auc


def sample(split: CorpusSplit, n: int, seed: int) -> list[int]:
    rows = np.random.default_rng(seed).permutation(len(split))[:n]
    return sorted(int(i) for i in rows)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--synthetic", type=Path, required=True, help="the synthetic corpus (train, validation, test)"
    )
    p.add_argument("--real", type=Path, required=True, help="a real-speech corpus (its test split)")
    p.add_argument("--model", default="whisper-tiny.en", help="the base model whose encoder is pooled")
    p.add_argument("--train", type=int, default=1000, help="training rows the gates are fit on")
    p.add_argument("--heldout", type=int, default=300, help="validation and test rows")
    p.add_argument("--quantile", type=float, default=0.99, help="of the validation scores: the threshold")
    p.add_argument("--components", type=int, nargs="+", default=[16, 32, 64], help="PPCA directions")
    p.add_argument("--batch-size", type=int, default=8)
    args = p.parse_args(argv)
    torch.manual_seed(0)
    model, processor = FAMILY.load(args.model)
    model.eval()
    stats = {}
    for name, corpus, split, n in (
        ("train", args.synthetic, "train", args.train),
        ("val", args.synthetic, "validation", args.heldout),
        ("test", args.synthetic, "test", args.heldout),
        ("real", args.real, "test", 10**9),
    ):
        rows = CorpusSplit(corpus, split)
        picked = sample(rows, n, 0)
        stats[name] = pooled_statistics(model, processor, rows, picked, args.batch_size, name)
        if name == "real":  # each recording's category (or source) and duration
            groups = [str(rows.rows[i].get("category") or rows.rows[i].get("source") or "-") for i in picked]
            durations = np.array([float(rows.rows[i]["duration"]) for i in picked])
    # The gate as the study uses it (mean, PPCA with 32 directions): which real recordings pass.
    gate = NoveltyGate.fit(torch.as_tensor(stats["train"]["mean"]), components=32)
    threshold = np.quantile(gate.score(torch.as_tensor(stats["val"]["mean"])).numpy(), args.quantile)
    flagged = gate.score(torch.as_tensor(stats["real"]["mean"])).numpy() > threshold
    print("| real recordings (gate: mean, PPCA 32) | n | flagged | mean duration (s) |")
    print("| --- | --- | --- | --- |")
    for group in sorted(set(groups)):
        sel = np.array([g == group for g in groups])
        print(f"| {group} | {sel.sum()} | {flagged[sel].mean():.1%} | {durations[sel].mean():.2f} |")
    for name, sel in (("shorter than 2 s", durations < 2.0), ("2 s or longer", durations >= 2.0)):
        if not sel.any():
            continue
        print(f"| {name} | {sel.sum()} | {flagged[sel].mean():.1%} | {durations[sel].mean():.2f} |")
    print()
    print("| gate input | distance | real flagged | synthetic test flagged | AUC real vs validation |")
    print("| --- | --- | --- | --- | --- |")
    for kind in ("mean", "std", "mean+std"):
        x = {k: features(v, kind) for k, v in stats.items()}
        for k in args.components:

            def ppca(train, k=k):
                gate = NoveltyGate.fit(torch.as_tensor(train), components=k)
                return lambda z: gate.score(torch.as_tensor(z)).numpy()

            real, test, auc = separation(x["train"], x["val"], x["test"], x["real"], ppca, args.quantile)
            print(f"| {kind} | PPCA, {k} directions | {real:.1%} | {test:.1%} | {auc:.3f} |")
        for k in (1, 5):
            real, test, auc = separation(
                x["train"],
                x["val"],
                x["test"],
                x["real"],
                lambda tr, k=k: lambda z: knn_distance(z, tr, k),
                args.quantile,
            )
            print(f"| {kind} | cosine, {k}-th neighbour | {real:.1%} | {test:.1%} | {auc:.3f} |")


if __name__ == "__main__":
    main()
