"""``flexispeech train`` on the command line: bad values as one-line errors before anything
is written, overrides anywhere among the options, and what a resume past the end says."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from mini_corpus import write_mini_corpus

from flexispeech.cli import build_parser, main


@pytest.mark.parametrize(
    ("value", "key"),
    [
        ("train.max_steps=0", "train.max_steps"),
        ("train.max_steps=-1", "train.max_steps"),
        ("train.batch_size=0", "train.batch_size"),
        ("train.lr=-1", "train.lr"),
    ],
)
def test_a_value_that_cannot_train_is_one_line_and_writes_nothing(
    tmp_path: Path, error_line, value: str, key: str
) -> None:
    out = tmp_path / "out"
    # the corpus does not exist either: the value fails first, before anything is opened or loaded
    argv = ["train", "--no-progress", f"output_dir={out}", "model.source=random:tiny", value]
    assert main([*argv, f"data.corpus={tmp_path / 'none'}"]) == 2
    error_line("train", key, value)
    assert not out.exists()


def test_overrides_may_follow_options(capsys) -> None:
    args = build_parser().parse_args(
        [
            "train",
            "--config",
            "c.yaml",
            "data.corpus=d",
            "--no-progress",
            "output_dir=o",
            "--resume",
            "seed=1",
        ]
    )
    assert args.config == "c.yaml" and args.no_progress and args.resume
    assert args.overrides == ["data.corpus=d", "output_dir=o", "seed=1"]  # in order: later ones win
    # an unknown option among them is still an error
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["train", "a=1", "--bogus", "b=2"])
    assert exit_.value.code == 2
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err


def test_an_unknown_override_key_names_the_command_line(tmp_path: Path, error_line) -> None:
    conf = tmp_path / "static_r16.yaml"
    conf.write_text("train:\n  max_steps: 5\n")
    assert main(["train", "--config", str(conf), "--no-progress", "train.max_stepz=1"]) == 2
    line = error_line("train", "command-line override 'train.max_stepz=1'", "did you mean train.max_steps")
    assert "static_r16.yaml" not in line


def _corpus(root: Path) -> Path:
    tone = 0.1 * np.sin(2 * np.pi * 300 * np.arange(8000) / 16000)
    return write_mini_corpus(root, [(tone, "train", 0.5)] * 4)


def test_resume_past_max_steps_says_nothing_was_trained(tmp_path: Path, capsys) -> None:
    corpus, out = _corpus(tmp_path / "corpus"), tmp_path / "out"
    argv = [
        "train",
        "--no-progress",
        f"output_dir={out}",
        "model.source=random:tiny",
        "model.audio_ctx=100",
        f"data.corpus={corpus}",
        "train.batch_size=2",
        "train.warmup_steps=0",
        "train.save_every=2",
        "adapter.ranks=[4]",
    ]
    assert main([*argv, "train.max_steps=3"]) == 0  # leaves the checkpoint of step 2
    # an ordinary resume (below max_steps, same corpus) says neither
    assert main([*argv, "--resume", "train.max_steps=4"]) == 0
    captured = capsys.readouterr()
    assert "nothing trained" not in captured.out and "warning" not in captured.err

    moved = shutil.copytree(corpus, tmp_path / "moved")
    assert main([*argv, "--resume", "train.max_steps=2", f"data.corpus={moved}"]) == 0
    captured = capsys.readouterr()
    assert json.loads((out / "train_summary.json").read_text())["steps_run"] == 0
    assert "nothing trained: the checkpoint at step 2 already reaches train.max_steps=2" in captured.out
    warnings = [line for line in captured.err.splitlines() if line.startswith("warning: train:")]
    assert len(warnings) == 1 and str(corpus) in warnings[0] and str(moved) in warnings[0]
