"""Evaluations of the synthetic corpus made before `eval` recorded each row's channel,
compared by channel (wideband / telephone), from the corpus' plan: no model, no audio.

    python recipes/synthetic/channel_offline.py data/synthetic-gpu/corpus.json \\
        exp/.../base/eval_test exp/.../static_r16/eval_test exp/.../flexi_benefit_nscale/eval_test \\
        --baseline base

The synthetic corpus passes a tenth of its utterances through a telephone band-pass
(``data_prep.synthetic``); which ones is a pure function of the corpus' size, seed and voices
(``make_plan``), all in its corpus.json. This replays that plan, checks it against every
evaluation (each row's reference text and voice must be the plan's: a corpus built by another
version is refused), adds the channel to the rows and prints the paired comparison of
``flexispeech compare`` on each channel.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from data_prep.synthetic import make_plan
from data_prep.tts import voices_named
from flexispeech.errors import FlexispeechError
from flexispeech.evaluation.report import load_run
from flexispeech.evaluation.speech_paired import speech_paired_table

KEEP = ("all", "wideband channel", "telephone channel")


def plan_channels(corpus_json: Path) -> dict[str, tuple[str, str, str]]:
    """Utterance id -> (channel, reference text, voice name) of the corpus ``corpus_json`` describes."""
    info = json.loads(corpus_json.read_text())["info"]
    plans = make_plan(info["size"], int(info["seed"]), voices_named(set(info["voices"])))
    return {p.id: (p.channel, p.text, p.voice.name) for p in plans}


def with_channels(run: dict[str, Any], plan: dict[str, tuple[str, str, str]], source: str) -> dict[str, Any]:
    """``run`` with each row's ``channel`` from ``plan``; FlexispeechError naming ``source``
    where a row is not the plan's (another corpus, or one built by another version)."""
    for u in run["utterances"]:
        planned = plan.get(u["id"])
        if planned is None or planned[1] != u["ref"] or planned[2] != u.get("voice"):
            raise FlexispeechError(f"{source}: row {u['id']} is not the corpus plan's (another corpus?)")
        u["channel"] = planned[0]
    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("corpus", type=Path, help="the synthetic corpus' corpus.json")
    parser.add_argument(
        "runs", type=Path, nargs="+", help="evaluations of its test split (results.json or folders)"
    )
    parser.add_argument("--baseline", required=True, help="the run every other run is paired with (its name)")
    args = parser.parse_args(argv)
    try:
        plan = plan_channels(args.corpus)
        runs = [with_channels(load_run(p), plan, str(p)) for p in args.runs]
        table = speech_paired_table(runs, args.baseline)
    except (FlexispeechError, OSError, KeyError, ValueError) as err:
        print(f"channel_offline: {err}", file=sys.stderr)
        return 1
    for line in table.splitlines():  # the overall and per-channel rows of each run
        cells = [c.strip() for c in line.split("|")]
        if len(cells) < 3 or cells[2] in KEEP or not cells[1] or cells[1] in ("method", "---"):
            print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
