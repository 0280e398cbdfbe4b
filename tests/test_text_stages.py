"""recipes/text_stages.sh trains, calibrates, evaluates and compares the routing-by-benefit
run on the gpu profile only; checked with a stand-in for the flexispeech command that
records its calls."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import pytest

from flexispeech.training.config import load_config

RECIPES = Path(__file__).resolve().parents[1] / "recipes"

FAKE = """#!/usr/bin/env bash
echo "$*" >> "$CALLS"
"""


def run_stages(tmp_path: Path, task: str, profile: str, *extra: str) -> list[list[str]]:
    fake, calls = tmp_path / "flexispeech", tmp_path / "calls.txt"
    fake.write_text(FAKE)
    fake.chmod(0o755)
    subprocess.run(
        [
            "bash",
            str(RECIPES / task / "run.sh"),
            "--profile",
            profile,
            "--data",
            "data/task",
            "--exp",
            str(tmp_path / "exp"),
            *extra,
        ],
        check=True,
        capture_output=True,
        text=True,
        cwd=RECIPES.parent,
        env={"PATH": "/usr/bin:/bin", "FLEXISPEECH": str(fake), "CALLS": str(calls)},
    )
    return [shlex.split(line) for line in calls.read_text().splitlines()]


def _value(call: list[str], option: str) -> str:
    return call[call.index(option) + 1]


def _run_of(call: list[str]) -> str:
    """The run a train, calibrate or eval call is for."""
    if call[0] == "train":
        return next(a for a in call if a.startswith("output_dir=")).rsplit("/", 1)[1]
    path = call[1] if call[0] == "calibrate" else _value(call, "--adapter")
    return path.split("exp/", 1)[1].split("/")[0]


@pytest.mark.parametrize("task", ["math", "qa"])
def test_gpu_profile_calibrates_the_benefit_run_on_validation_before_evaluating_it(
    tmp_path: Path, task: str
) -> None:
    calls = run_stages(tmp_path, task, "gpu")
    (signals,) = [c for c in calls if c[0] == "signals"]
    assert _value(signals, "--splits") == "train,validation,test"  # calibrate reads validation's signals
    assert _value(signals, "--label-splits") == "train"
    names = [(c[0], _run_of(c)) for c in calls if c[0] in ("train", "calibrate") or "--adapter" in c]
    (calib,) = [c for c in calls if c[0] == "calibrate"]
    assert _run_of(calib) == "flexi_benefit_nscale" and _value(calib, "--split") == "validation"
    static_rmax = max(load_config(RECIPES / task / "conf" / "static_r8.yaml").adapter.ranks)
    assert float(_value(calib, "--target-mean-rank")) <= static_rmax / 2
    assert names.index(("train", "flexi_benefit_nscale")) < names.index(("calibrate", "flexi_benefit_nscale"))
    assert names.index(("calibrate", "flexi_benefit_nscale")) < names.index(("eval", "flexi_benefit_nscale"))
    (run_eval,) = [
        c for c in calls if c[0] == "eval" and "--adapter" in c and _run_of(c) == "flexi_benefit_nscale"
    ]
    # the validation answers are decoded as the test answers will be
    for option in ("--max-new-tokens", "--device", "--batch-size"):
        assert _value(calib, option) == _value(run_eval, option)
    (compare,) = [c for c in calls if c[0] == "compare"]
    assert any(a.endswith("flexi_benefit_nscale/eval_test") for a in compare)


def test_a_trained_benefit_run_is_still_calibrated_and_the_cpu_profile_has_none(tmp_path: Path) -> None:
    trained = tmp_path / "exp" / "flexi_benefit_nscale"
    trained.mkdir(parents=True)
    (trained / "train_summary.json").write_text("{}")  # trained, killed before its calibration
    calls = run_stages(tmp_path, "math", "gpu", "--stage", "4", "--stop-stage", "4")
    assert [c[0] for c in calls if "flexi_benefit_nscale" in " ".join(c)] == ["calibrate"]
    (trained / "calibrate_validation").mkdir()
    (trained / "calibrate_validation" / "summary.json").write_text("{}")
    (tmp_path / "calls.txt").unlink()
    calls = run_stages(tmp_path, "math", "gpu", "--stage", "4", "--stop-stage", "4")
    assert not [c for c in calls if c[0] == "calibrate"]  # calibrated: skipped

    (tmp_path / "cpu").mkdir()
    calls = run_stages(tmp_path / "cpu", "math", "cpu")
    assert not [c for c in calls if c[0] == "calibrate" or "flexi_benefit_nscale" in " ".join(c)]
    (signals,) = [c for c in calls if c[0] == "signals"]
    assert _value(signals, "--splits") == "train,test"
    (tmp_path / "import").mkdir()  # imported tasks have no validation split: no benefit run
    calls = run_stages(tmp_path / "import", "qa", "gpu", "--import", "squad")
    assert not [c for c in calls if c[0] == "calibrate" or "flexi_benefit_nscale" in " ".join(c)]


@pytest.mark.parametrize("task", ["math", "qa"])
def test_benefit_config_matches_the_static_runs_it_is_compared_with(task: str) -> None:
    conf = RECIPES / task / "conf"
    benefit = load_config(conf / "flexi_benefit_nscale.yaml")
    static_rmax = max(max(load_config(p).adapter.ranks) for p in conf.glob("static_r*.yaml"))
    assert benefit.adapter.ranks[0] == 0 and max(benefit.adapter.ranks) == static_rmax
    assert benefit.adapter.scaling == "nested" and benefit.routing.mode == "random"
    assert (benefit.train.nested.prob, benefit.train.nested.mode) == (1.0, "random")
