"""Fine-tune Whisper tiny.en with Flexi-LoRA inside Hugging Face's Seq2SeqTrainer.

    python examples/hf_trainer_whisper.py data/syn exp/hf_trainer --max-steps 200

CORPUS is a flexispeech corpus with cached signals (`flexispeech prepare` then
`flexispeech signals`). The router gives harder utterances (lower SNR) higher ranks, at a
mean rank of half the largest; it routes every batch in training and is saved with the
adapter, so `flexispeech transcribe --adapter OUT/adapter --router auto` serves each
utterance at the rank it was trained at. Everything else is the Trainer as usual
(`accelerate launch` for several GPUs).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from transformers import Seq2SeqTrainingArguments

from flexispeech import FlexiLoraConfig, ThresholdRouter, attach_router, inject
from flexispeech.data.speech import CorpusSplit
from flexispeech.integrations.hf import FlexiSeq2SeqTrainer, FlexiSpeechCollator
from flexispeech.models.family import get_family, load_model


def main(argv: Sequence[str] | None = None) -> Path:
    """Train and return the directory of the saved adapter."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("corpus", type=Path, help="a flexispeech corpus with cached signals")
    parser.add_argument("out", type=Path, help="output directory (checkpoints and OUT/adapter)")
    parser.add_argument("--model", default="whisper-tiny.en", help="base model (default whisper-tiny.en)")
    parser.add_argument(
        "--ranks", type=int, nargs="+", default=[0, 2, 4, 8], help="allowed ranks (default 0 2 4 8)"
    )
    parser.add_argument("--max-steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument(
        "--audio-ctx", type=int, help="Whisper encoder window in 20-ms positions (default 30 s)"
    )
    args = parser.parse_args(argv)

    family = get_family("whisper")
    model, processor = load_model(family, args.model, audio_ctx=args.audio_ctx)
    split = CorpusSplit(args.corpus, "train")
    ranks = tuple(args.ranks)
    router = ThresholdRouter(ranks, weights={"snr_db": -1.0})  # lower SNR = harder = higher rank
    router.calibrate(split.all_signals(), target_mean_rank=ranks[-1] / 2)
    meta = {"base_model": args.model, "family": "whisper"}  # what `flexispeech export` reads back
    inject(model, FlexiLoraConfig(ranks=ranks, target_modules=family.default_targets, metadata=meta))
    attach_router(model, router)

    training_args = Seq2SeqTrainingArguments(
        output_dir=str(args.out),
        per_device_train_batch_size=args.batch_size,
        max_steps=args.max_steps,
        learning_rate=args.lr,
        warmup_steps=min(10, args.max_steps // 10),
        logging_steps=10,
        save_steps=100,
        report_to=[],
        remove_unused_columns=False,  # the batches carry the signals the router reads
    )
    trainer = FlexiSeq2SeqTrainer(
        model=model, args=training_args, train_dataset=split, data_collator=FlexiSpeechCollator(processor)
    )
    trainer.train()
    trainer.save_model(str(args.out / "adapter"))  # the adapter (save_adapter), from the main process only
    return args.out / "adapter"


if __name__ == "__main__":
    print(main())
