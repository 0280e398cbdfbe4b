"""Where `flexispeech train` makes the host wait for the GPU, and what the study's training
loop does per second, on a corpus of generated clips (no TTS, no download).

    python benchmarks/train_syncs.py --device cuda                       # throughput
    python benchmarks/train_syncs.py --device cuda --sync-debug 3        # + where the host syncs
    python benchmarks/train_syncs.py --device cpu --steps 2 --batch 2 --model random:tiny   # smoke

It trains static LoRA r16 with the GPU profile's settings (adapters on every attention and
MLP projection, bf16 on a GPU, on-the-fly augmentation: SpecAugment, noise, speed,
reverberation; the log-mel made on the training device) for ``--steps`` steps and prints
the run's utterances/s and its time in augmentation (train_summary.json). ``--sync-debug
N`` also runs N steps under ``torch.cuda.set_sync_debug_mode("warn")`` and prints each
place in flexispeech that made the host wait for the device, with its count: a training
step that syncs cannot queue the next batch's work while the GPU computes this one.

A/B of two versions of the package: run the script twice, with ``PYTHONPATH`` pointing at
each copy; it prints which flexispeech it imported. Absolute numbers only from a GPU.
"""

from __future__ import annotations

import argparse
import collections
import json
import tempfile
import time
import traceback
import warnings
from pathlib import Path

import numpy as np

SR = 16_000
WORDS = "the quick brown fox jumps over a lazy dog while seven wizards quietly hex bold jugglers".split()


def make_corpus(root: Path, n: int, seconds: tuple[float, float], seed: int = 0) -> Path:
    """``n`` training clips (noise-modulated tones, ``seconds`` long) with random sentences."""
    import soundfile as sf

    from flexispeech.data.corpus import write_corpus

    rng = np.random.default_rng(seed)
    (root / "audio").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        dur = float(rng.uniform(*seconds))
        t = np.arange(int(dur * SR)) / SR
        envelope = 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(2, 6) * t)
        audio = 0.2 * envelope * np.sin(2 * np.pi * rng.uniform(120, 300) * t) + rng.normal(0, 0.01, t.size)
        sf.write(root / "audio" / f"u{i}.wav", audio.astype(np.float32), SR)
        text = " ".join(rng.choice(WORDS, size=max(2, int(dur * 2.5))))
        rows.append(
            {
                "id": f"u{i}",
                "audio": f"audio/u{i}.wav",
                "text": text,
                "duration": dur,
                "speaker": "s",
                "split": "train",
                # a cached signal, as `flexispeech signals` writes it: a fixed router reads
                # none, but every example must carry one
                "signal_duration": dur,
            }
        )
    return write_corpus(rows, root, name="sync-bench")


def overrides(args: argparse.Namespace, corpus: Path, out: Path, steps: int) -> list[str]:
    """The gpu profile's training settings (recipes/speech_stages.sh) for static LoRA r16."""
    precision = "bf16" if args.device == "cuda" else "'no'"  # quoted: YAML reads a bare no as False
    return [
        f"output_dir={out}",
        "name=bench",
        f"model.source={args.model}",
        f"data.corpus={corpus}",
        "model.audio_ctx=null",
        "model.cache_encoder_layers=0",
        "data.max_duration=null",
        f"train.mixed_precision={precision}",
        f"train.batch_size={args.batch}",
        f"train.num_workers={args.workers}",
        f"train.max_steps={steps}",
        "train.warmup_steps=1",
        f"train.log_every={steps}",
        f"train.save_every={steps}",
        "train.eval_every=0",
        "adapter.ranks=[16]",
        "routing.mode=fixed",
        "augment.spec_augment=true",
        "augment.noise_prob=0.5",
        "augment.speed_prob=0.3",
        "augment.reverb_prob=0.2",
    ]


def run(args: argparse.Namespace, corpus: Path, steps: int, tag: str) -> dict:
    from flexispeech.training.config import load_config
    from flexispeech.training.loop import train

    out = Path(tempfile.mkdtemp(prefix=f"bench-{tag}-"))
    cfg = load_config(str(args.config), overrides(args, corpus, out, steps))
    t0 = time.perf_counter()
    train(cfg, progress=False)
    summary = json.loads((out / "train_summary.json").read_text())
    summary["wall_s"] = round(time.perf_counter() - t0, 2)
    return summary


def sync_sites(args: argparse.Namespace, corpus: Path) -> collections.Counter:
    """Each flexispeech line (file:line function) under which the host synced, counted."""
    import torch

    sites: collections.Counter = collections.Counter()
    import flexispeech

    package = str(Path(flexispeech.__file__).resolve().parent)  # the copy imported (A/B runs)

    def record(message, category, filename, lineno, file=None, line=None):  # noqa: ANN001
        if "synchroniz" not in str(message):
            return
        frames = [f for f in traceback.extract_stack()[:-1] if f.filename.startswith(package)]
        where = frames[-1] if frames else None
        name = f"{where.filename[len(package) + 1 :]}:{where.lineno} {where.name}" if where else "outside"
        sites[name] += 1

    previous = warnings.showwarning
    warnings.showwarning = record
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = record
            run(args, corpus, args.sync_debug, "sync")
    finally:
        torch.cuda.set_sync_debug_mode("default")
        warnings.showwarning = previous
    return sites


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--device", default="cuda", help="cuda (bf16) or cpu; training runs where accelerate puts it"
    )
    parser.add_argument("--model", default="whisper-tiny.en")
    parser.add_argument("--config", type=Path, default=Path("recipes/synthetic/conf/static_r16.yaml"))
    parser.add_argument("--steps", type=int, default=40, help="steps per timed run (default 40)")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs (default 2)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--clips", type=int, default=256, help="corpus size (default 256)")
    parser.add_argument("--seconds", type=float, nargs=2, default=(3.0, 20.0), help="clip length range")
    parser.add_argument(
        "--sync-debug", type=int, default=0, metavar="N", help="also N steps under sync debug"
    )
    args = parser.parse_args(argv)

    import flexispeech

    print(f"flexispeech from {Path(flexispeech.__file__).parent}")
    with tempfile.TemporaryDirectory() as tmp:
        corpus = make_corpus(Path(tmp) / "corpus", args.clips, tuple(args.seconds))
        for k in range(args.repeats):
            s = run(args, corpus, args.steps, f"t{k}")
            print(
                f"run {k}: {s['steps_run']} steps, {s['utt_per_s']} utterances/s, augmentation "
                f"{s['augment_s']} s of {s['train_time_s']} s, data wait {s['data_wait_s']} s, wall {s['wall_s']} s"
            )
        if args.sync_debug and args.device == "cuda":
            sites = sync_sites(args, corpus)
            print(f"host syncs in {args.sync_debug} steps (setup included), by place:")
            for where, n in sites.most_common():
                print(f"  {n:5d}  {where}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
