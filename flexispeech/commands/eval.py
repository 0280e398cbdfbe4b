"""``flexispeech eval``: WER/CER of a base model or an adapter on a corpus split, by bucket."""

from __future__ import annotations

import argparse

from flexispeech.commands import options
from flexispeech.commands.options import add_fallback_options, add_workers_option, workers
from flexispeech.models import causal_lm, whisper

HELP = "evaluate a model or adapter on a corpus split: WER/CER overall and by SNR, duration and voice"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="corpus directory (from `flexispeech prepare`)")
    parser.add_argument(
        "--adapter", help="adapter directory (from `flexispeech train`); omit to evaluate the base model"
    )
    parser.add_argument(
        "--model",
        help="base model (default: the one the adapter was trained on, else "
        f"{whisper.DEFAULT_SOURCE}; {causal_lm.DEFAULT_SOURCE} on a text task)",
    )
    parser.add_argument("--family", help="model family (default: from the adapter, else whisper)")
    parser.add_argument("--split", default="test", help="split to evaluate (default: test)")
    parser.add_argument(
        "--rank", type=int, help="decode every utterance at this rank instead of the adapter's router"
    )
    parser.add_argument(
        "--audio-ctx",
        type=int,
        metavar="N",
        help=f"Whisper encoder window in positions of {1000 // whisper.POSITIONS_PER_SECOND} ms "
        "(500 = 10 s; default: the window the adapter was trained with, else "
        f"{whisper.FULL_POSITIONS} = {whisper.FULL_POSITIONS // whisper.POSITIONS_PER_SECOND} s; "
        "a warning when it differs from the adapter's). Every utterance is scored: a clip "
        "longer than the window is decoded window by window",
    )
    add_fallback_options(
        parser,
        "decode an utterance again at rank R when its hypothesis loops (gzip compression ratio "
        "over --compression-ratio, Whisper's hallucination test) and keep the one that loops less; "
        "0 is the base model. Needs --adapter (default: off)",
    )
    parser.add_argument(
        "--consensus-ranks",
        metavar="R,R,...",
        help="decode every utterance the router sends to an adapter rank at each of these ranks and "
        "keep the transcript closest to the others (least total word distance; costs one decoding "
        "per rank). Utterances routed to rank 0 keep the base model's. Speech only; needs --adapter",
    )
    parser.add_argument(
        "--joint-ranks", metavar="R,R,...", help=options.JOINT_HELP + "; not with --consensus-ranks"
    )
    parser.add_argument("--joint-base-weight", type=float, metavar="W", help=options.JOINT_WEIGHT_HELP)
    parser.add_argument(
        "--beam", type=options.positive_int, default=1, help="beam size (default: 1 = greedy)"
    )
    parser.add_argument(
        "--max-new-tokens", type=options.positive_int, help="cap on generated tokens (default: the family's)"
    )
    options.add_batch_size_option(parser)
    parser.add_argument(
        "--max-examples",
        type=options.positive_int,
        help="evaluate only the first N utterances (seeded sample)",
    )
    parser.add_argument("--max-duration", type=float, help="skip utterances longer than this many seconds")
    parser.add_argument(
        "--name", help="the method's name in tables (default: the adapter's run name, or 'base')"
    )
    parser.add_argument(
        "--out", help="output directory (default: <adapter>/../eval_<split>, or exp/base/eval_<split>)"
    )
    parser.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    add_workers_option(parser)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from flexispeech.data.text import TextTaskSplit, open_split
    from flexispeech.data.text_format import is_text_task
    from flexispeech.errors import FlexispeechError
    from flexispeech.evaluation.evaluate import decode_split, summarize, write_results
    from flexispeech.evaluation.metrics import source_normalizer
    from flexispeech.evaluation.tables import pct
    from flexispeech.evaluation.text_report import summarize_text
    from flexispeech.lora.inject import serving_router
    from flexispeech.lora.io import load_adapter, read_adapter_config, serving_window
    from flexispeech.models.family import get_family, load_model

    fallback = options.fallback(args)
    if fallback is not None and not args.adapter:
        raise FlexispeechError("--fallback-rank needs --adapter: the base model has no other rank")
    consensus = options.rank_list(args.consensus_ranks, "--consensus-ranks", least=2)
    if consensus and not args.adapter:
        raise FlexispeechError("--consensus-ranks needs --adapter: the base model has no other rank")
    joint = options.rank_list(args.joint_ranks, "--joint-ranks", least=1)
    if joint and not args.adapter:
        raise FlexispeechError("--joint-ranks needs --adapter: the base model has no other rank")
    if joint and consensus:
        raise FlexispeechError("--joint-ranks and --consensus-ranks each pick the transcript: give one")
    joint_weights = options.base_weight(args.joint_base_weight, joint)
    meta = read_adapter_config(args.adapter)["config"]["metadata"] if args.adapter else {}
    text = is_text_task(Path(args.data))  # text tasks default to the causal LM
    source = (
        args.model or meta.get("base_model") or (causal_lm.DEFAULT_SOURCE if text else whisper.DEFAULT_SOURCE)
    )
    family = get_family(args.family or meta.get("family") or ("causal_lm" if text else "whisper"))
    if joint and not hasattr(family, "label_logprob"):
        raise FlexispeechError(
            f"--joint-ranks: speech only; the {family.name} family cannot score transcripts"
        )
    audio_ctx = args.audio_ctx
    if family.name == "whisper" and args.adapter:
        audio_ctx = serving_window(args.audio_ctx, args.adapter, "eval")  # default: the adapter's window
    # The data first: a wrong --data fails in a moment, not after the model has loaded. No
    # utterance is dropped for the window: one it cannot hear whole is scored as decoded.
    split = open_split(args.data, args.split, max_duration=args.max_duration, max_examples=args.max_examples)
    if (consensus or joint) and isinstance(split, TextTaskSplit):
        option = "--consensus-ranks" if consensus else "--joint-ranks"
        raise FlexispeechError(f"{option}: {args.data} is a text task; the pick is for speech")
    model, processor = load_model(family, source, args.device, audio_ctx)
    router = None
    if args.adapter:
        load_adapter(model, args.adapter)
        router = serving_router(model, args.rank)  # the chain transcribe and stream use too
        from flexispeech.lora.ranks import check_ranks, get_state

        # before decoding, not in it
        check_ranks(get_state(model).config, ([fallback.rank] if fallback else []) + consensus + joint)
    elif args.rank is not None:
        print("note: --rank without --adapter is ignored (the base model has no adapter)")
    from flexispeech.data.speech import CorpusSplit
    from flexispeech.signals.cache import AUDIO_SIGNALS

    live = sorted(set(router.signal_names if router is not None else ()) - set(split.signal_names))
    if live:
        print(
            f"note: {args.data} has no cached signals {live} for the router: computing them while decoding "
            f"(`flexispeech signals {args.data}` caches them)"
        )
    if isinstance(split, CorpusSplit) and not split.signal_names:
        # A corpus with no cached signal at all: its clips get the audio signals (cheap) while
        # decoding, so that the results break down by SNR and duration, and a router that
        # reads no signal (a fixed rank) still sees every row of its batch.
        live = sorted(set(live) | set(AUDIO_SIGNALS))
    records, decode_s = decode_split(
        model,
        family,
        processor,
        split,
        router,
        args.batch_size,
        args.beam,
        max_new_tokens=args.max_new_tokens,
        live_signals=live,
        num_workers=workers(args),
        fallback=fallback,
        consensus=consensus,
        joint=joint,
        joint_weights=joint_weights,
        normalize=source_normalizer(source) if consensus or joint else None,
    )
    window = {"audio_ctx": whisper.encoder_positions(model)} if family.name == "whisper" else {}
    corpus = {"data": str(args.data), **window}
    name = args.name or meta.get("run") or "base"
    default_out = (
        Path(args.adapter).parent / f"eval_{args.split}"
        if args.adapter
        else Path("exp/base") / f"eval_{args.split}"
    )
    if isinstance(split, TextTaskSplit):
        result = summarize_text(
            records, split.metric, decode_s, model if args.adapter else None, name, split.task_name
        )
        result |= {
            "model": source,
            "adapter": args.adapter,
            "split": args.split,
            "router": router.describe() if router is not None else None,
            **corpus,
        }
        out = write_results(result, args.out or default_out)
        o = result["overall"]
        score = (
            f"accuracy {pct(o['accuracy'])}%"
            if split.metric == "accuracy"
            else f"EM {pct(o['em'])}%  F1 {pct(o['f1'])}%"
        )
        print(
            f"{name}: {score}  on {result['n']} questions (mean rank {result['mean_rank']:.2f}, "
            f"active adapter params {result['active_params_mean']:,.0f}) -> {out}"
        )
        return 0
    result = summarize(
        records,
        source_normalizer(source),
        decode_s,
        model if args.adapter else None,
        name,
    )
    result |= {
        "model": source,
        "adapter": args.adapter,
        "split": args.split,
        "router": router.describe() if router is not None else None,
        "fallback": {"rank": fallback.rank, "threshold": fallback.threshold} if fallback else None,
        "consensus_ranks": consensus or None,
        "joint_ranks": joint or None,
        "joint_weights": {str(k): w for k, w in joint_weights.items()} or None,
        **corpus,
    }
    out = write_results(result, args.out or default_out)
    o = result["overall"]
    if fallback:
        without = result.get("overall_without_fallback", o)
        print(
            f"fallback: {result['fallback_decodes']} looping hypotheses decoded again at rank "
            f"{fallback.rank}, {result['fallback_kept']} replaced (WER without: {pct(without['wer'])}%)"
        )
    if consensus:
        print(
            f"consensus of ranks {consensus}: {result['decodes_per_utterance']:.2f} decodings per utterance "
            f"(served ranks: {result['rank_histogram']})"
        )
    if joint:
        print(
            f"joint pick of ranks {joint}"
            + (f" (base model's weight {joint_weights[0]:g})" if joint_weights else "")
            + f": {result['decodes_per_utterance']:.2f} decodings per utterance, "
            f"{result['scored_utterances']} utterances scored (served ranks: {result['rank_histogram']})"
        )
    skipped = f", {result['n_skipped']} skipped (undecodable audio)" if result["n_skipped"] else ""
    empty = f", {o['n_empty_refs']} with empty references (not scored)" if o["n_empty_refs"] else ""
    print(
        f"{name}: WER {pct(o['wer'])}%  CER {pct(o['cer'])}%  on {result['n']} utterances{skipped}{empty} "
        f"(mean rank {result['mean_rank']:.2f}, RTF {result['rtf']:.3f}) -> {out}"
    )
    return 0
