"""Greedy decoding: flexispeech's static-cache decoder against transformers' ``generate``.

    python benchmarks/greedy_decode.py                                   # CPU, tiny.en
    python benchmarks/greedy_decode.py --device cuda --batch 128 512     # GPU: graphs on

Both decode the same batch (the speech fixtures of tests/assets, repeated to the batch
size, at the full 30-s window) with the same token budget, interleaved round by round;
the script checks that the token sequences are identical and prints the median time of
each and their ratio, measured side by side in one run. With ``--random`` a random-weight
model of the shape is used: it never stops early, so every row runs to the budget (the
slowest case, and the one a hallucinating row forces on a whole batch).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

ASSETS = Path(__file__).resolve().parents[1] / "tests" / "assets"
FILES = ("fox.wav", "stella.wav", "meeting.wav")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", default="whisper-tiny.en", help="model name or directory (default whisper-tiny.en)"
    )
    parser.add_argument(
        "--random", metavar="SHAPE", help="random weights of this shape instead (tiny, base, small)"
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, nargs="+", default=[3, 12], help="batch sizes (default 3 12)")
    parser.add_argument("--tokens", type=int, default=48, help="token budget per batch (default 48)")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds per batch size (default 3)")
    args = parser.parse_args()

    from flexispeech.audio import load_audio
    from flexispeech.models.family import Example
    from flexispeech.models.whisper import FAMILY
    from flexispeech.models.whisper_greedy import greedy_decode, prefix_ids

    device = torch.device(args.device)
    model, processor = FAMILY.load(f"random:{args.random}" if args.random else args.model, device=str(device))
    clips = [load_audio(ASSETS / name) for name in FILES]
    eos, n_prefix = model.generation_config.eos_token_id, len(prefix_ids(model))

    def reference(features: torch.Tensor) -> list[list[int]]:
        seqs = model.generate(
            features, return_timestamps=False, force_unique_generate_call=True, max_new_tokens=args.tokens
        )
        out = []
        for seq in seqs.tolist():
            cut = next((i for i in range(n_prefix, len(seq)) if seq[i] == eos), len(seq) - 1)
            out.append(seq[: cut + 1])
        return out

    print(f"model {'random ' + args.random if args.random else args.model} on {device}, {args.tokens} tokens")
    print("| batch | generate (ms) | flexispeech (ms) | ratio | same tokens |")
    print("|---|---|---|---|---|")
    for batch in args.batch:
        examples = [Example(id=str(i), text="", audio=clips[i % len(clips)]) for i in range(batch)]
        features = FAMILY.collate(processor, examples, train=False)["input_features"].to(device)
        times: dict[str, list[float]] = {"generate": [], "ours": []}
        with torch.no_grad():
            want = reference(features)  # warm-up of both, and the tokens to match
            got = [s.tolist() for s in greedy_decode(model, features, args.tokens).sequences]
            for _ in range(args.rounds):
                for name, run in (
                    ("generate", reference),
                    ("ours", lambda f: greedy_decode(model, f, args.tokens)),
                ):
                    _sync(device)
                    start = time.perf_counter()
                    run(features)
                    _sync(device)
                    times[name].append(1000 * (time.perf_counter() - start))
        a, b = statistics.median(times["generate"]), statistics.median(times["ours"])
        print(f"| {batch} | {a:.1f} | {b:.1f} | {b / a:.2f}x | {'yes' if got == want else 'NO'} |")


if __name__ == "__main__":
    main()
