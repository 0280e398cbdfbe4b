"""``flexispeech eval``: WER/CER of a base model or an adapter on a corpus split, by bucket."""

from __future__ import annotations

import argparse

HELP = "evaluate a model or adapter on a corpus split: WER/CER overall and by SNR, duration and voice"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="corpus directory (from `flexispeech prepare`)")
    parser.add_argument("--adapter", help="adapter directory (from `flexispeech train`); omit to evaluate the base model")
    parser.add_argument("--model", help="base model (default: the one the adapter was trained on, else whisper-tiny.en)")
    parser.add_argument("--family", help="model family (default: from the adapter, else whisper)")
    parser.add_argument("--split", default="test", help="split to evaluate (default: test)")
    parser.add_argument("--rank", type=int, help="decode every utterance at this rank instead of the adapter's router")
    parser.add_argument("--audio-ctx", type=int, help="Whisper encoder positions (default: the adapter's, else 1500 = 30 s)")
    parser.add_argument("--beam", type=int, default=1, help="beam size (default: 1 = greedy)")
    parser.add_argument("--batch-size", type=int, default=16, help="utterances per decoding batch (default: 16)")
    parser.add_argument("--max-examples", type=int, help="evaluate only the first N utterances (seeded sample)")
    parser.add_argument("--max-duration", type=float, help="skip utterances longer than this many seconds")
    parser.add_argument("--name", help="the method's name in tables (default: the adapter's run name, or 'base')")
    parser.add_argument("--out", help="output directory (default: <adapter>/../eval_<split>, or exp/base/eval_<split>)")
    parser.add_argument("--device", default="cpu", help="torch device (default: cpu)")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from flexispeech.data import CorpusSplit
    from flexispeech.evaluate import adapter_router, decode_split, summarize, write_results
    from flexispeech.lora.io import load_adapter, read_adapter_config
    from flexispeech.lora.router import FixedRouter
    from flexispeech.metrics import english_normalizer
    from flexispeech.models.family import get_family, load_model
    from flexispeech.models.sources import pretrained_path
    from flexispeech.report import pct

    meta = read_adapter_config(args.adapter)["config"]["metadata"] if args.adapter else {}
    source = args.model or meta.get("base_model") or "whisper-tiny.en"
    family = get_family(args.family or meta.get("family") or "whisper")
    audio_ctx = args.audio_ctx or meta.get("audio_ctx")
    model, processor = load_model(family, source, args.device, audio_ctx)
    router = None
    if args.adapter:
        load_adapter(model, args.adapter)
        router = FixedRouter(args.rank) if args.rank is not None else adapter_router(model)
    elif args.rank is not None:
        print("note: --rank without --adapter is ignored (the base model has no adapter)")
    max_duration = args.max_duration
    if audio_ctx and family.name == "whisper":
        max_duration = min(max_duration or 1e9, audio_ctx / 50)
    split = CorpusSplit(args.data, args.split, max_duration=max_duration, max_examples=args.max_examples)
    records, decode_s = decode_split(model, family, processor, split, router, args.batch_size, args.beam)
    name = args.name or meta.get("run") or "base"
    model_dir = pretrained_path(source)
    result = summarize(records, english_normalizer(model_dir if isinstance(model_dir, Path) else None), decode_s, model if args.adapter else None, name)
    result |= {"model": source, "adapter": args.adapter, "split": args.split, "router": getattr(router, "describe", lambda: None)()}
    default_out = Path(args.adapter).parent / f"eval_{args.split}" if args.adapter else Path("exp/base") / f"eval_{args.split}"
    out = write_results(result, args.out or default_out)
    o = result["overall"]
    print(f"{name}: WER {pct(o['wer'])}%  CER {pct(o['cer'])}%  on {result['n']} utterances "
          f"(mean rank {result['mean_rank']:.2f}, RTF {result['rtf']:.3f}) -> {out}")
    return 0
