"""recipes/speech_stages.sh evaluates every model on the whole test split at the adapters'
window and at 30 s (and on a real-speech corpus), and pairs the runs in stage 7; checked
with a stand-in for the flexispeech command that records its calls."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import pytest

from flexispeech.training.config import load_config, to_dict

RECIPES = Path(__file__).resolve().parents[1] / "recipes"

FAKE = """#!/usr/bin/env bash
echo "$*" >> "$CALLS"
prev=""
for a in "$@"; do
  if [ "$prev" = --out ] && [ "$1" = eval ]; then mkdir -p "$a" && echo '{}' > "$a/results.json"; fi
  prev=$a
done
"""


def run_stages(tmp_path: Path, profile: str, *extra: str) -> list[list[str]]:
    fake, calls = tmp_path / "flexispeech", tmp_path / "calls.txt"
    fake.write_text(FAKE)
    fake.chmod(0o755)
    subprocess.run(
        [
            "bash",
            str(RECIPES / "speech_stages.sh"),
            "--conf",
            "conf",
            "--data",
            "data/syn",
            "--exp",
            str(tmp_path / "exp"),
            "--profile",
            profile,
            "--stage",
            "2",
            *extra,
        ],
        check=True,
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "FLEXISPEECH": str(fake), "CALLS": str(calls)},
    )
    return [shlex.split(line) for line in calls.read_text().splitlines()]


def _evals(calls: list[list[str]]) -> dict[str, list[str]]:
    return {c[c.index("--out") + 1].split("exp/", 1)[1]: c for c in calls if c[0] == "eval"}


def _assert_variant_evals(
    evals: dict[str, list[str]], variant: str, option: str, value: str, adapters: list[tuple[str, str]]
) -> None:
    """Each (run, adapter) of ``adapters`` has its evaluations ``<run>_<variant>`` on the test
    split and real speech, through ``exp/<adapter>/adapter`` with ``option value``."""
    for run, adapter in adapters:
        for split in ("eval_test", "eval_real"):
            call = evals[f"{run}_{variant}/{split}"]
            assert call[call.index("--adapter") + 1].endswith(f"exp/{adapter}/adapter")
            assert call[call.index(option) + 1] == value


def _baselines(compare: list[str]) -> list[str]:
    """The run names a `flexispeech compare` call pairs the others against, in order."""
    return [compare[i + 1] for i, a in enumerate(compare) if a == "--baseline"]


def test_cpu_profile_evaluates_at_both_windows_and_on_real_speech(tmp_path: Path) -> None:
    calls = run_stages(tmp_path, "cpu", "--real", "data/real")
    evals = _evals(calls)
    runs = ["base", "static_r8", "static_r16", "flexi_threshold", "flexi_learned", "inconsistent"]
    # real speech: every model at the adapters' window, the base at 30 s too (the CPU's time)
    assert set(evals) == {f"{r}/{e}" for r in runs for e in ("eval_test", "eval_test_30s", "eval_real")} | {
        "base/eval_real_30s"
    }
    assert evals["base/eval_test"][evals["base/eval_test"].index("--audio-ctx") + 1] == "500"
    # a CPU scores a seeded sample of the real recordings, the same for every model
    assert all(c[c.index("--max-examples") + 1] == "40" for k, c in evals.items() if "eval_real" in k)
    assert not any("--max-examples" in c for k, c in evals.items() if "eval_test" in k)
    assert "--audio-ctx" not in evals["static_r8/eval_test"]  # the adapter's own window
    assert all(c[c.index("--audio-ctx") + 1] == "1500" for k, c in evals.items() if k.endswith("_30s"))
    assert not any("--max-duration" in c for c in evals.values())  # the whole split
    (compare,) = [c for c in calls if c[0] == "compare"]
    assert sum(a.endswith("eval_real") for a in compare) == 6
    assert _baselines(compare) == [
        "base",
        "static_r8",
        "static_r16",
    ]


def test_gpu_profile_evaluates_once_at_30_s(tmp_path: Path) -> None:
    evals = _evals(run_stages(tmp_path, "gpu"))
    assert set(evals) == {
        f"{r}/eval_test"
        for r in [
            "base",
            "static_r8",
            "static_r16",
            "static_r6",
            "flexi_threshold",
            "flexi_learned",
            "flexi_embedding",
            "flexi_nested",
            "flexi_benefit_nscale",
            "inconsistent",
            "flexi_nested_noaug",
            "static_r16_gated",  # the gpu profile's --gated runs, behind the novelty gate
            "flexi_benefit_nscale_gated",
            "flexi_nested_gated",
            # every Flexi run served at rank 2 alone (--fixed-ranks; not the ablations)
            *(f"{r}_r2" for r in ("flexi_threshold", "flexi_learned", "flexi_embedding", "flexi_nested")),
            "flexi_benefit_nscale_r2",
        ]
    }


def test_gated_runs_get_the_gate_after_training_and_are_compared(tmp_path: Path) -> None:
    calls = run_stages(
        tmp_path,
        "gpu",
        "--stage",
        "1",
        "--runs",
        "static_r16 flexi_benefit static_r16_seed1",
        "--seeds",
        "0,1",
        "--decisive",
        "static_r16 flexi_benefit",
        "--gated",
        "static_r16",
        "--jobs",
        "1",
    )
    names = [" ".join(c[:2]) for c in calls]
    # stage 1 caches the embedding the gate reads, on the splits it is fit and thresholded on
    emb = [c for c in calls if c[0] == "signals" and ("--embedding" in c or "--embedding-only" in c)]
    assert {s for c in emb for s in c[c.index("--splits") + 1].split(",")} >= {"train", "validation"}
    gates = [c for c in calls if c[0] == "gate"]
    assert [(g[1].split("exp/", 1)[1], g[g.index("--out") + 1].split("exp/", 1)[1]) for g in gates] == [
        ("static_r16/adapter", "static_r16_gated/adapter"),
        ("static_r16_seed1/adapter", "static_r16_seed1_gated/adapter"),  # a seed of a gated run: gated too
    ]
    first_train = next(
        i for i, n in enumerate(names) if n.startswith("train") and "static_r16" in str(calls[i])
    )
    assert names.index("gate " + gates[0][1]) > first_train  # after its adapter exists
    (calib,) = [c for c in calls if c[0] == "calibrate"]  # routing by benefit: fit before the evaluation
    assert (
        calib[1].endswith("flexi_benefit/adapter") and calib[calib.index("--target-mean-rank") + 1] == "7.5"
    )
    evals = _evals(calls)
    assert {"static_r16_gated/eval_test", "static_r16_seed1_gated/eval_test"} <= set(evals)
    gated_eval = evals["static_r16_gated/eval_test"]
    assert gated_eval[gated_eval.index("--name") + 1] == "static_r16_gated"  # its own row in the tables
    assert "flexi_benefit_gated/eval_test" not in evals
    (compare,) = [c for c in calls if c[0] == "compare"]
    assert any(a.endswith("static_r16_gated/eval_test") for a in compare)
    # a gated Flexi run is paired with the static run behind the same gate, seeds too
    assert _baselines(compare) == [
        "base", "static_r16", "static_r16_gated", "static_r16_seed1", "static_r16_seed1_gated",
    ]  # fmt: skip
    (tmp_path / "none").mkdir()
    other = [
        c
        for c in run_stages(
            tmp_path / "none", "gpu", "--stage", "1", "--stop-stage", "1", "--model", "whisper-base"
        )
        if c[0] == "signals"
    ]
    # another model: the proxy from tiny.en, the embedding from that model's encoder, two passes
    assert [(c[c.index("--model") + 1], "--embedding" in c) for c in other] == [
        ("whisper-tiny.en", False),
        ("whisper-base", True),
    ]
    (tmp_path / "none" / "calls.txt").unlink()
    cpu = [
        c
        for c in run_stages(tmp_path / "none", "cpu", "--stage", "1", "--stop-stage", "1")
        if c[0] == "signals"
    ]
    assert len(cpu) == 1 and "--embedding" not in cpu[0]  # no run of the cpu profile reads it
    (tmp_path / "none" / "calls.txt").unlink()
    none = _evals(run_stages(tmp_path / "none", "gpu", "--runs", "static_r16", "--gated", "", "--jobs", "1"))
    assert set(none) == {"base/eval_test", "static_r16/eval_test"}


def test_runs_picks_runs_and_their_order_and_device_overrides(tmp_path: Path) -> None:
    calls = run_stages(
        tmp_path, "gpu", "--runs", "flexi_nested static_r16", "--device", "cpu", "--jobs", "1", "--gated", ""
    )
    evals = _evals(calls)
    assert set(evals) == {
        "base/eval_test",
        "flexi_nested/eval_test",
        "static_r16/eval_test",
        "flexi_nested_r2/eval_test",  # the gpu profile's --fixed-ranks
    }
    adapters = [
        c[c.index("--adapter") + 1].split("exp/", 1)[1] for c in calls if c[0] == "eval" and "--adapter" in c
    ]
    # the order asked for (flexi_nested twice: routed, then at its fixed rank)
    assert adapters == ["flexi_nested/adapter", "flexi_nested/adapter", "static_r16/adapter"]
    assert all(c[c.index("--device") + 1] == "cpu" for c in calls if "--device" in c)
    assert all(
        c[c.index("--batch-size") + 1] == "512" for c in calls if c[0] == "eval"
    )  # the profile's batch kept


TIMED = """
if [ "$1" = train ]; then
  for a in "$@"; do case "$a" in output_dir=*) run=${a#output_dir=} ;; esac; done
  echo "start $(basename "$run") $(date +%s.%N)" >> "$TIMES"; sleep 0.6
  echo "end $(basename "$run") $(date +%s.%N)" >> "$TIMES"
  case "$run" in *flexi_learned*) echo "flexi_learned: boom" >&2; exit 1 ;; esac
fi
"""


def _stages(
    tmp_path: Path, *extra: str, stage: str = "3", stand_in: str = TIMED, env: dict[str, str] | None = None
) -> tuple[subprocess.CompletedProcess, dict[str, tuple[float, float]]]:
    """speech_stages.sh from ``stage`` to 6 (gpu profile) with the stand-in ``FAKE +
    stand_in``, which writes "start|end NAME TIME" lines; NAME -> (the first call's start,
    the last call's end)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    fake, calls, times = tmp_path / "flexispeech", tmp_path / "calls.txt", tmp_path / "times.txt"
    fake.write_text(FAKE + stand_in)
    fake.chmod(0o755)
    args = [
        "--conf",
        "conf",
        "--data",
        "d",
        "--exp",
        str(tmp_path / "exp"),
        "--profile",
        "gpu",
        "--stage",
        stage,
    ]
    out = subprocess.run(
        ["bash", str(RECIPES / "speech_stages.sh"), *args, "--stop-stage", "6", *extra],
        capture_output=True,
        text=True,
        env={
            "PATH": "/usr/bin:/bin",
            "FLEXISPEECH": str(fake),
            "CALLS": str(calls),
            "TIMES": str(times),
            **(env or {}),
        },
    )
    spans: dict[str, list[float]] = {}
    for line in times.read_text().splitlines():
        kind, name, t = line.split()
        span = spans.setdefault(name, [float(t), 0.0])
        if kind == "end":
            span[1] = float(t)
    return out, {name: (start, end) for name, (start, end) in spans.items()}


def _overlapping(spans: dict[str, tuple[float, float]]) -> int:
    """The most runs whose training spans overlap at one time."""
    return max(sum(1 for s, e in spans.values() if s <= t < e) for t, _ in spans.values())


def test_jobs_trains_runs_side_by_side_and_names_the_failed_one(tmp_path: Path) -> None:
    """--jobs 2 (the gpu profile's default): two runs train at once, a failing run does not
    stop the others, and the script fails naming it, its output in EXP/<run>/stages.log."""
    runs = "static_r16 flexi_nested flexi_learned inconsistent"
    out, spans = _stages(tmp_path / "two", "--runs", runs)
    assert set(spans) == set(runs.split()) and _overlapping(spans) == 2
    assert out.returncode == 1 and "runs that failed: flexi_learned" in out.stderr
    exp = tmp_path / "two" / "exp"
    assert "flexi_learned: boom" in (exp / "flexi_learned" / "stages.log").read_text()
    for r in ("static_r16", "flexi_nested", "inconsistent"):  # evaluated despite the failure
        assert (exp / r / "eval_test" / "results.json").exists()
    assert not (exp / "flexi_learned" / "eval_test").exists()

    out, spans = _stages(tmp_path / "one", "--runs", "static_r16 flexi_nested", "--jobs", "1")
    assert out.returncode == 0 and _overlapping(spans) == 1  # one after the other
    out, _ = _refused(tmp_path / "zero", "--jobs", "0")
    assert out.returncode == 2 and "--jobs must be a positive integer" in out.stderr


# The stand-in's tail for stage 1 beside the runs: `signals` takes 1 s (fails with
# SIGNALS_FAIL set), `train` 0.3 s; each call timed as "command" or "train:<run>".
SPANS = """
name=$1; for a in "$@"; do case "$a" in output_dir=*) name="$1:$(basename "${a#output_dir=}")" ;; esac; done
echo "start $name $(date +%s.%N)" >> "$TIMES"
case "$1" in signals) sleep 1; [ -z "${SIGNALS_FAIL:-}" ] || exit 1 ;; train) sleep 0.3 ;; esac
echo "end $name $(date +%s.%N)" >> "$TIMES"
"""


def test_stages_1_2_run_beside_runs_that_train_without_signals(tmp_path: Path) -> None:
    """With --jobs 2 a static and a benefit run start training while stage 1 still computes
    signals; a routed run trains only after it, and every run's calibration, gate and
    evaluation come after it too. With --jobs 1 everything is in stage order."""
    runs = "static_r16 flexi_benefit_nscale flexi_nested"
    out, spans = _stages(
        tmp_path / "two",
        "--runs",
        runs,
        "--gated",
        "flexi_benefit_nscale",
        "--jobs",
        "3",
        stage="1",
        stand_in=SPANS,
    )
    assert out.returncode == 0, out.stderr
    signals_start, signals_end = spans["signals"]
    for r in ("static_r16", "flexi_benefit_nscale"):
        assert spans[f"train:{r}"][0] < signals_end  # trains beside stage 1
    assert spans["train:flexi_nested"][0] >= signals_end  # reads the proxy: waits
    for name in ("calibrate", "gate", "eval"):
        assert spans[name][0] >= signals_end  # the first of each
    calls = (tmp_path / "two" / "calls.txt").read_text().splitlines()
    assert any(c.startswith("eval ") and "--name base" in c for c in calls)  # stage 2 ran
    assert signals_start < spans["train:static_r16"][1]

    out, spans = _stages(
        tmp_path / "one", "--runs", runs, "--gated", "", "--jobs", "1", stage="1", stand_in=SPANS
    )
    assert out.returncode == 0, out.stderr
    assert all(spans[f"train:{r}"][0] >= spans["signals"][1] for r in runs.split())


def test_a_failed_stage_1_beside_the_runs_fails_only_those_that_need_it(tmp_path: Path) -> None:
    """Stage 1 failing beside the runs: the static run still trains (it needs no signal) but
    is not evaluated; the script fails naming stage 1 and the runs, and skips stage 2."""
    out, spans = _stages(
        tmp_path,
        *("--runs", "static_r16 flexi_nested", "--gated", "", "--jobs", "2"),
        stage="1",
        stand_in=SPANS,
        env={"SIGNALS_FAIL": "1"},
    )
    assert out.returncode == 1
    assert "stage 1 (signals) failed, stage 2 not run" in out.stderr
    assert "runs that failed: static_r16 flexi_nested" in out.stderr
    assert "train:static_r16" in spans and "train:flexi_nested" not in spans and "eval" not in spans
    assert "needs its columns" in (tmp_path / "exp" / "flexi_nested" / "stages.log").read_text()


def test_signals_of_the_training_split_only_when_a_run_reads_them(tmp_path: Path) -> None:
    """Static and benefit runs train without model signals: stage 1 then decodes no
    training row (three quarters of the gpu corpus); a routed run needs its model signals,
    and a gated one only its embedding (an encoder pass, no decoding)."""

    def splits(sub: str, *extra: str) -> list[str]:
        """The --splits of each signals call, "audio:" for one without a model, "embedding:"
        for an encoder pass alone."""
        (tmp_path / sub).mkdir()
        calls = run_stages(tmp_path / sub, "gpu", "--stage", "1", "--stop-stage", "1", *extra)
        kind = {True: "embedding:", False: ""}
        return [
            (kind["--embedding-only" in c] if "--model" in c else "audio:") + c[c.index("--splits") + 1]
            for c in calls
            if c[0] == "signals"
        ]

    assert splits(
        "plain", "--seeds", "0,1", "--runs", "static_r16_seed1 static_r8 flexi_benefit_nscale", "--gated", ""
    ) == ["audio:train", "validation,test"]  # the training batches are routed on audio signals
    assert splits("routed", "--runs", "static_r16 flexi_nested", "--gated", "") == ["train,validation,test"]
    assert splits("gated", "--runs", "static_r16 flexi_benefit_nscale", "--gated", "static_r16") == [
        "audio:train",
        "embedding:train",
        "validation,test",
    ]
    assert splits("routed_gated", "--runs", "flexi_nested", "--gated", "flexi_nested") == [
        "train,validation,test"
    ]
    assert splits("profile") == ["train,validation,test"]  # the whole gpu list


def test_another_model_reads_tiny_en_signals_on_real_speech_too(tmp_path: Path) -> None:
    """Routers and confidence gates are fit on tiny.en's proxy (cached in stage 1); the real
    recordings have none cached, and `eval` would compute them from the adapted model's
    base. For a model other than tiny.en stage 1 caches tiny.en's on them as well."""

    def real_signals(sub: str, *extra: str) -> list[list[str]]:
        (tmp_path / sub).mkdir()
        calls = run_stages(
            tmp_path / sub, "gpu", "--stage", "1", "--stop-stage", "1", "--real", "data/real", *extra
        )
        return [c for c in calls if c[0] == "signals" and c[1] == "data/real"]

    (base,) = real_signals("base", "--model", "whisper-base")
    assert base[base.index("--model") + 1] == "whisper-tiny.en" and base[base.index("--splits") + 1] == "test"
    assert base[base.index("--audio-ctx") + 1] == "1500" and "--embedding" not in base
    assert real_signals("tiny") == []  # tiny.en: the live signals are tiny.en's already


def test_runs_side_by_side_share_the_loader_workers(tmp_path: Path) -> None:
    """With --jobs N on the gpu profile, each run's loaders (training and decoding) get 1/N
    of the cores (2 to 8); one run at a time keeps the profile's 8 and eval's default."""
    import os

    def loader_args(sub: str, jobs: str) -> tuple[set[str], set[str]]:
        out, _ = _stages(tmp_path / sub, "--runs", "static_r16 flexi_nested inconsistent", "--jobs", jobs)
        assert out.returncode == 0, out.stderr
        calls = [shlex.split(line) for line in (tmp_path / sub / "calls.txt").read_text().splitlines()]
        train = {
            a.split("=", 1)[1]
            for c in calls
            if c[0] == "train"
            for a in c
            if a.startswith("train.num_workers=")
        }
        decode = {
            c[c.index("--workers") + 1] if "--workers" in c else "default" for c in calls if c[0] == "eval"
        }
        return train, decode

    share = str(max(2, min(8, (len(os.sched_getaffinity(0)) - 1) // 3)))
    train, decode = loader_args("three", "3")
    # the profile's 8 comes first on the command line; the share after it wins
    assert train == {"8", share} and decode == {share}
    assert loader_args("one", "1") == ({"8"}, {"default"})


def test_more_runs_side_by_side_decode_in_smaller_batches(tmp_path: Path) -> None:
    """GPU memory: up to 3 runs side by side decode at the profile's 512, up to 6 at 256,
    more at 128 (the last --batch-size of a call is the one argparse keeps)."""

    def batch(sub: str, jobs: str, *model: str) -> set[str]:
        out, _ = _stages(
            tmp_path / sub, "--runs", "static_r16 flexi_nested inconsistent", "--jobs", jobs, *model
        )
        assert out.returncode == 0, out.stderr
        calls = [shlex.split(line) for line in (tmp_path / sub / "calls.txt").read_text().splitlines()]
        return {
            [c[i + 1] for i, a in enumerate(c) if a == "--batch-size"][-1]
            for c in calls
            if c[0] in ("eval", "signals")
        }

    assert batch("three", "3") == {"512"}
    assert batch("six", "6") == {"256"}
    assert batch("eight", "8") == {"128"}
    # Whisper base holds about twice tiny.en's memory: half the batch at the same job counts
    assert batch("base-one", "1", "--model", "whisper-base") == {"512"}
    assert batch("base-two", "2", "--model", "whisper-base") == {"256"}
    assert batch("base-six", "6", "--model", "whisper-base") == {"128"}


def _refused(tmp_path: Path, *extra: str) -> tuple[subprocess.CompletedProcess, Path]:
    """speech_stages.sh with options it must refuse, and the file its flexispeech calls
    would have gone to."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    fake, calls = tmp_path / "flexispeech", tmp_path / "calls.txt"
    fake.write_text(FAKE)
    fake.chmod(0o755)
    out = subprocess.run(
        [
            "bash",
            str(RECIPES / "speech_stages.sh"),
            "--conf",
            "c",
            "--data",
            "d",
            "--exp",
            str(tmp_path / "e"),
            *extra,
        ],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "FLEXISPEECH": str(fake), "CALLS": str(calls)},
    )
    return out, calls


def test_unknown_run_is_refused_before_anything_runs(tmp_path: Path) -> None:
    out, calls = _refused(tmp_path, "--profile", "gpu", "--runs", "static_r16 flexi_magic")
    assert out.returncode == 2 and "--runs: unknown run flexi_magic" in out.stderr
    assert not calls.exists()


def _run_recipe(tmp_path: Path, fake_body: str) -> tuple[list[list[str]], str]:
    fake, calls = tmp_path / "flexispeech", tmp_path / "calls.txt"
    fake.write_text(FAKE + fake_body)
    fake.chmod(0o755)
    out = subprocess.run(
        ["bash", str(RECIPES / "synthetic" / "run.sh"), "--stop-stage", "2", "--exp", str(tmp_path / "exp")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "FLEXISPEECH": str(fake), "CALLS": str(calls)},
    )
    assert out.returncode == 0, out.stderr
    return [shlex.split(line) for line in calls.read_text().splitlines()], out.stderr


def test_recipe_scores_real_speech_when_its_packages_are_installed(tmp_path: Path) -> None:
    """Without --real the synthetic recipe imports the installed real recordings and scores
    the base on them; without the packages it says so and goes on with synthetic speech."""
    installed = (
        'if [ "$1 $2" = "prepare realspeech" ]; then mkdir -p "$4" && echo "{}" > "$4/corpus.json"; fi\n'
    )
    (tmp_path / "with").mkdir()
    calls, _ = _run_recipe(tmp_path / "with", installed)
    assert ["prepare", "realspeech", "--out", "data/real"] in calls
    assert "base/eval_real" in _evals(calls) and _evals(calls)["base/eval_real"][1:3] == [
        "--data",
        "data/real",
    ]

    missing = 'if [ "$1 $2" = "prepare realspeech" ]; then echo "no packages" >&2; exit 2; fi\n'
    (tmp_path / "without").mkdir()
    calls, err = _run_recipe(tmp_path / "without", missing)
    assert "no real-speech packages installed" in err
    assert not any("eval_real" in k for k in _evals(calls)) and "base/eval_test" in _evals(calls)


def test_joint_evaluates_each_static_and_flexi_run_behind_its_gate(tmp_path: Path) -> None:
    """--joint "0": every static and Flexi run (seed repetitions too) is also evaluated with
    `eval --joint-ranks 0`, a gated one through its gated adapter (after the gate exists),
    as <run>_joint on the test split and real speech; each static run's is a baseline."""
    calls = run_stages(
        tmp_path, "gpu", "--real", "data/real", "--jobs", "1", "--fixed-ranks", "", "--seeds", "0,1",
        "--gated", "static_r16 flexi_benefit_nscale", "--joint", "0",
        "--runs", "static_r16 flexi_benefit_nscale flexi_benefit_nscale_seed1 flexi_nested inconsistent",
    )  # fmt: skip
    evals = _evals(calls)
    _assert_variant_evals(
        evals,
        "joint",
        "--joint-ranks",
        "0",
        [
            ("static_r16", "static_r16_gated"),
            ("flexi_benefit_nscale", "flexi_benefit_nscale_gated"),
            ("flexi_benefit_nscale_seed1", "flexi_benefit_nscale_seed1_gated"),  # a seed of a gated run
            ("flexi_nested", "flexi_nested"),  # not gated: its own adapter
        ],
    )
    for run in ("static_r16", "flexi_benefit_nscale"):
        gate = next(i for i, c in enumerate(calls) if c[0] == "gate" and f"{run}/" in c[1])
        first = next(i for i, c in enumerate(calls) if f"{run}_joint/" in str(c))
        assert gate < first  # the gated adapter exists before its joint pick is evaluated
    assert not any(k.startswith("inconsistent_joint") for k in evals)  # the ablation is neither
    (compare,) = [c for c in calls if c[0] == "compare"]
    assert sum("_joint/" in a for a in compare) == 8
    assert "static_r16_joint" in _baselines(compare)
    assert "flexi_benefit_nscale_joint" not in _baselines(compare)
    assert all("--joint-base-weight" not in c for k, c in evals.items() if "_joint/" in k)  # equal votes
    bad, calls = _refused(tmp_path / "neg", "--joint", "-1")
    assert bad.returncode == 2 and "--joint must be ranks >= 0" in bad.stderr
    assert not calls.exists()
    for args, said in (
        (("--joint", "0", "--joint-weight", "-1"), "--joint-weight must be a number >= 0"),
        (("--joint-weight", "0.5"), "--joint-weight needs --joint"),
    ):
        bad, calls = _refused(tmp_path / said[:14].replace(" ", "_"), *args)
        assert bad.returncode == 2 and said in bad.stderr and not calls.exists()


def test_joint_weight_reaches_every_joint_evaluation(tmp_path: Path) -> None:
    """--joint-weight 0.25: each <run>_joint evaluation weighs the base model's vote so."""
    calls = run_stages(
        tmp_path, "gpu", "--real", "data/real", "--jobs", "1", "--fixed-ranks", "",
        "--joint", "0", "--joint-weight", "0.25", "--runs", "static_r16 flexi_benefit_nscale",
    )  # fmt: skip
    joint = {k: c for k, c in _evals(calls).items() if "_joint/" in k}
    assert len(joint) == 4
    assert all(c[c.index("--joint-base-weight") + 1] == "0.25" for c in joint.values())


@pytest.mark.parametrize(
    "run, parent", [("static_r16_tel", "static_r16"), ("flexi_benefit_nscale_tel", "flexi_benefit_nscale")]
)
def test_a_telephone_run_is_its_parent_with_the_line_on(run: str, parent: str) -> None:
    conf = RECIPES / "synthetic" / "conf"
    tel, base = to_dict(load_config(conf / f"{run}.yaml")), to_dict(load_config(conf / f"{parent}.yaml"))
    assert tel["augment"].pop("telephone_prob") == 0.3 and base["augment"].pop("telephone_prob") == 0.0
    for d in (tel, base):
        d.pop("name"), d.pop("output_dir")
    assert tel == base


DECODER_ONLY = load_config(
    RECIPES / "synthetic" / "conf" / "flexi_benefit_nscale_dec.yaml"
).adapter.target_modules


@pytest.mark.parametrize(
    "run, parent", [("static_r16_dec", "static_r16"), ("flexi_benefit_nscale_dec", "flexi_benefit_nscale")]
)
def test_a_decoder_only_run_is_its_parent_on_the_decoder(run: str, parent: str) -> None:
    """The two halves of the decoder-only pair differ from their parents in the adapted
    modules alone, and on the same ones: static and Flexi LoRA on the same decoder projections."""
    conf = RECIPES / "synthetic" / "conf"
    dec, base = to_dict(load_config(conf / f"{run}.yaml")), to_dict(load_config(conf / f"{parent}.yaml"))
    assert (
        dec["adapter"].pop("target_modules") == DECODER_ONLY and base["adapter"].pop("target_modules") is None
    )
    assert dec["model"].pop("cache_encoder_layers") == 0
    base["model"].pop("cache_encoder_layers")
    for d in (dec, base):
        d.pop("name"), d.pop("output_dir")
    assert dec == base


@pytest.mark.parametrize("suffix", ["dec", "keep", "keep3", "keepbc"])
def test_a_named_pair_runs_as_a_pair(tmp_path: Path, suffix: str) -> None:
    """The decoder-only and keep-base pairs (static_r16_<s>, flexi_benefit_nscale_<s>) are off
    the gpu profile's default list; named, static trains as static (no calibration), Flexi
    is calibrated, both are gated, and stage 7 pairs the Flexi run with its static half."""
    static, flexi = f"static_r16_{suffix}", f"flexi_benefit_nscale_{suffix}"
    calls = run_stages(
        tmp_path,
        "gpu",
        "--jobs",
        "1",
        "--seeds",
        "0",
        "--stop-stage",
        "7",
        "--decisive",
        f"{static} {flexi}",
        "--runs",
        f"{static} {flexi}",
    )
    trained = sorted(c[c.index("--config") + 1].rsplit("/", 1)[1] for c in calls if c[0] == "train")
    assert trained == [f"{flexi}.yaml", f"{static}.yaml"]
    calibrated = [c[1].split("exp/", 1)[1] for c in calls if c[0] == "calibrate"]
    assert calibrated == [f"{flexi}/adapter"]
    gated = sorted(c[c.index("--out") + 1].split("exp/", 1)[1] for c in calls if c[0] == "gate")
    assert gated == [f"{flexi}_gated/adapter", f"{static}_gated/adapter"]
    (compare,) = [c for c in calls if c[0] == "compare"]
    baselines = {compare[i + 1] for i, a in enumerate(compare) if a == "--baseline"}
    assert {static, f"{static}_gated"} <= baselines
    assert flexi not in baselines


def test_the_telephone_pair_runs_when_named_with_its_seeds(tmp_path: Path) -> None:
    """static_r16_tel and flexi_benefit_nscale_tel are off the default list; named as the
    decisive pair they train from their own configs (the telephone line on top of the
    profile's augmentation), static as static (no calibration) and Flexi as Flexi
    (calibrated), both gated, for every seed; and the Flexi run is paired with the static
    one in stage 7."""
    calls = run_stages(
        tmp_path,
        "gpu",
        "--jobs",
        "1",
        "--seeds",
        "0,1",
        "--stop-stage",
        "7",
        "--decisive",
        "static_r16_tel flexi_benefit_nscale_tel",
        "--runs",
        "static_r16_tel flexi_benefit_nscale_tel static_r16_tel_seed1 flexi_benefit_nscale_tel_seed1",
    )
    trained = {c[c.index("--config") + 1].rsplit("/", 1)[1]: c for c in calls if c[0] == "train"}
    assert sorted(trained) == ["flexi_benefit_nscale_tel.yaml", "static_r16_tel.yaml"]
    assert all("augment.noise_prob=0.5" in c for c in trained.values())  # the profile's augmentation too
    outs = sorted(next(a for a in c if a.startswith("output_dir=")) for c in calls if c[0] == "train")
    assert [o.rsplit("/", 1)[1] for o in outs] == [
        "flexi_benefit_nscale_tel",
        "flexi_benefit_nscale_tel_seed1",
        "static_r16_tel",
        "static_r16_tel_seed1",
    ]
    calibrated = sorted(c[1].split("exp/", 1)[1] for c in calls if c[0] == "calibrate")
    assert calibrated == ["flexi_benefit_nscale_tel/adapter", "flexi_benefit_nscale_tel_seed1/adapter"]
    gated = sorted(c[c.index("--out") + 1].split("exp/", 1)[1] for c in calls if c[0] == "gate")
    assert gated == [
        f"{r}_gated/adapter"
        for r in (
            "flexi_benefit_nscale_tel",
            "flexi_benefit_nscale_tel_seed1",
            "static_r16_tel",
            "static_r16_tel_seed1",
        )
    ]
    (compare,) = [c for c in calls if c[0] == "compare"]
    baselines = {compare[i + 1] for i, a in enumerate(compare) if a == "--baseline"}
    assert {"static_r16_tel", "static_r16_tel_seed1", "static_r16_tel_gated"} <= baselines
    assert "flexi_benefit_nscale_tel" not in baselines


def test_a_run_off_the_default_list_runs_when_named(tmp_path: Path) -> None:
    """flexi_benefit_full and flexi_benefit (measured worse) are not in the gpu list, but
    --runs still runs them, as Flexi runs: trained, calibrated, gated and evaluated. The
    default list has flexi_benefit_nscale, calibrated on the validation split."""
    calls = run_stages(tmp_path, "gpu", "--runs", "flexi_benefit_full", "--jobs", "1")
    assert [c[0] for c in calls if c[0] in ("train", "calibrate", "gate")] == ["train", "calibrate", "gate"]
    for part in (
        "enc",
        "dec",
    ):  # the encoder- and decoder-only ablations: their regex targets left as they are
        (tmp_path / part).mkdir()
        calls = run_stages(tmp_path / part, "gpu", "--runs", f"flexi_benefit_nscale_{part}", "--jobs", "1")
        (train,) = [c for c in calls if c[0] == "train"]
        assert f"conf/flexi_benefit_nscale_{part}.yaml" in " ".join(
            train
        ) and "target_modules" not in " ".join(train)
        assert [c[0] for c in calls if c[0] in ("calibrate", "gate")] == ["calibrate", "gate"]
    (tmp_path / "all").mkdir()
    calls = run_stages(tmp_path / "all", "gpu")
    default = _evals(calls)
    assert not {"flexi_benefit_full/eval_test", "flexi_benefit/eval_test"} & set(default)  # not by default
    train = [c for c in calls if c[0] == "train" and "conf/flexi_benefit_nscale.yaml" in c]
    (calib,) = [c for c in calls if c[0] == "calibrate"]  # a benefit run: its router fit on validation
    assert len(train) == 1 and calib[1].endswith("flexi_benefit_nscale/adapter")
    assert "flexi_benefit_nscale/eval_test" in default
    # the gpu profile's training: up to 1,500 steps, the best validation WER kept (scored
    # with the loop fallback eval uses), early stopping not before step 650
    line = " ".join(train[0])  # the fake records its arguments space-joined
    assert "train.max_steps=1500" in line and "eval.batch_size=128" in line
    assert "train.early_stopping={patience: 3, min_steps: 650, metric: wer, fallback_rank: 0}" in line


def test_a_benefit_run_trained_but_not_calibrated_is_calibrated_on_rerun(tmp_path: Path) -> None:
    """A run killed between its training and its calibration: the next invocation does not
    train it again but does calibrate it; once calibrated, neither."""
    run = tmp_path / "exp" / "flexi_benefit_nscale"
    run.mkdir(parents=True)
    (run / "train_summary.json").write_text("{}")
    calls = run_stages(tmp_path, "gpu", "--runs", "flexi_benefit_nscale", "--gated", "", "--jobs", "1")
    assert [c[0] for c in calls if c[0] in ("train", "calibrate")] == ["calibrate"]
    (run / "calibrate_validation").mkdir()
    (run / "calibrate_validation" / "summary.json").write_text("{}")
    (tmp_path / "again").mkdir()
    (tmp_path / "again" / "exp").symlink_to(tmp_path / "exp")
    again = run_stages(
        tmp_path / "again", "gpu", "--runs", "flexi_benefit_nscale", "--gated", "", "--jobs", "1"
    )
    assert not [c for c in again if c[0] in ("train", "calibrate")]


def test_gpu_profile_evaluates_adapters_with_the_loop_fallback(tmp_path: Path) -> None:
    """Every adapter of the gpu profile (static, Flexi, gated; test and real speech) falls
    back to rank 0 on a looping hypothesis, the same rule for all; the base model has no
    other rank, and the CPU demo keeps plain decoding."""
    (tmp_path / "gpu").mkdir()
    (tmp_path / "cpu").mkdir()
    gpu = _evals(run_stages(tmp_path / "gpu", "gpu", "--real", "data/real"))
    for name, call in gpu.items():
        fallback = call[call.index("--fallback-rank") + 1] if "--fallback-rank" in call else None
        assert fallback == (None if name.startswith("base/") else "0"), (name, call)
    assert any(n.startswith("static_r16/eval_real") for n in gpu)
    # the benefit router is fit on the ranks as evaluation serves them: with the same fallback
    (tmp_path / "one").mkdir()
    calls = run_stages(tmp_path / "one", "gpu", "--runs", "flexi_benefit_nscale", "--jobs", "1")
    (calibrate,) = [c for c in calls if c[0] == "calibrate"]
    assert calibrate[calibrate.index("--fallback-rank") + 1] == "0"
    # the gated runs: the novelty gate and the base model's confidence on the surest 10 %
    gates = [c for c in calls if c[0] == "gate"]
    assert gates and all(c[c.index("--confident-share") + 1] == "0.1" for c in gates)
    cpu = _evals(run_stages(tmp_path / "cpu", "cpu", "--real", "data/real"))
    assert not any("--fallback-rank" in c for c in cpu.values())


def test_fixed_ranks_evaluate_each_flexi_run_at_one_rank(tmp_path: Path) -> None:
    """The gpu profile also serves every Flexi run (and its seed repetitions) at rank 2 alone,
    on the test split and real speech, as <run>_r2, with the loop fallback, and stage 7 pairs
    those evaluations with the others; static runs get none, the cpu profile none, and
    --fixed-ranks chooses the ranks (a bad one is refused)."""
    (tmp_path / "gpu").mkdir()
    calls = run_stages(
        tmp_path / "gpu", "gpu", "--real", "data/real", "--jobs", "1", "--gated", "", "--seeds", "0,1",
        "--runs", "static_r16 flexi_benefit_nscale flexi_benefit_nscale_seed1",
    )  # fmt: skip
    evals = _evals(calls)
    fixed = sorted(n for n in evals if "_r2/" in n)
    assert fixed == [
        "flexi_benefit_nscale_r2/eval_real",
        "flexi_benefit_nscale_r2/eval_test",
        "flexi_benefit_nscale_seed1_r2/eval_real",
        "flexi_benefit_nscale_seed1_r2/eval_test",
    ]
    for name in fixed:
        call = evals[name]
        run = name.split("_r2/")[0]
        assert call[call.index("--adapter") + 1].endswith(f"exp/{run}/adapter")
        assert call[call.index("--rank") + 1] == "2" and call[call.index("--fallback-rank") + 1] == "0"
    (compare,) = [c for c in calls if c[0] == "compare"]
    assert sum("_r2/" in a for a in compare) == 4
    (tmp_path / "two").mkdir()
    two = _evals(
        run_stages(tmp_path / "two", "gpu", "--runs", "flexi_benefit_nscale", "--fixed-ranks", "2 4")
    )
    assert {n for n in two if "_r" in n.split("/")[0][-3:]} == {
        "flexi_benefit_nscale_r2/eval_test",
        "flexi_benefit_nscale_r4/eval_test",
    }
    (tmp_path / "cpu").mkdir()
    assert not [n for n in _evals(run_stages(tmp_path / "cpu", "cpu")) if "_r2/" in n]
    bad, calls = _refused(tmp_path / "badx", "--fixed-ranks", "x")
    assert bad.returncode == 2 and "--fixed-ranks must be ranks > 0" in bad.stderr
    assert not calls.exists()


def test_strengths_scale_and_evaluate_static_and_flexi_runs(tmp_path: Path) -> None:
    """--strengths 0.5: every static and Flexi run (seed repetitions too, not the ablations)
    is copied at half strength by `flexispeech scale` and that copy evaluated (its own router,
    the loop fallback) on the test split and real speech as <run>_s0.5, and compared."""
    calls = run_stages(
        tmp_path, "gpu", "--real", "data/real", "--jobs", "1", "--gated", "", "--fixed-ranks", "",
        "--seeds", "0,1", "--strengths", "0.5",
        "--runs", "static_r16 flexi_benefit_nscale static_r16_seed1 inconsistent",
    )  # fmt: skip
    scales = [c for c in calls if c[0] == "scale"]
    assert [(c[1].split("exp/", 1)[1], c[c.index("--strength") + 1]) for c in scales] == [
        ("static_r16/adapter", "0.5"),
        ("flexi_benefit_nscale/adapter", "0.5"),
        ("static_r16_seed1/adapter", "0.5"),
    ]
    evals = _evals(calls)
    for run in ("static_r16", "flexi_benefit_nscale", "static_r16_seed1"):
        for split in ("eval_test", "eval_real"):
            call = evals[f"{run}_s0.5/{split}"]
            assert call[call.index("--adapter") + 1].endswith(f"exp/{run}_s0.5/adapter")
            assert "--rank" not in call and call[call.index("--fallback-rank") + 1] == "0"
    assert not any(n.startswith("inconsistent_s") for n in evals)
    (compare,) = [c for c in calls if c[0] == "compare"]
    assert sum("_s0.5/" in a for a in compare) == 6
    # each static run at half strength is a baseline too; Flexi copies are not
    assert _baselines(compare) == [
        "base",
        "static_r16",
        "static_r16_s0.5",
        "static_r16_seed1",
        "static_r16_seed1_s0.5",
    ]
    bad, calls = _refused(tmp_path / "bad-1", "--strengths", "-1")
    assert bad.returncode == 2 and "--strengths must be numbers > 0" in bad.stderr
    assert not calls.exists()
    zero, calls = _refused(tmp_path / "zero0", "--strengths", "0")
    assert zero.returncode == 2 and "--strengths must be numbers > 0" in zero.stderr
    assert not calls.exists()


def test_consensus_evaluates_each_flexi_run_behind_its_gate(tmp_path: Path) -> None:
    """--consensus "2 4 8 16": every Flexi run (seed repetitions too) is also evaluated with
    `eval --consensus-ranks 2,4,8,16`, a gated one through its gated adapter (after the
    gate exists), as <run>_consensus on the test split and real speech, and compared."""
    calls = run_stages(
        tmp_path, "gpu", "--real", "data/real", "--jobs", "1", "--fixed-ranks", "", "--seeds", "0,1",
        "--gated", "flexi_benefit_nscale", "--consensus", "2 4 8 16",
        "--runs", "static_r16 flexi_benefit_nscale flexi_benefit_nscale_seed1 flexi_nested",
    )  # fmt: skip
    evals = _evals(calls)
    names = [" ".join(c[:2]) for c in calls]
    _assert_variant_evals(
        evals,
        "consensus",
        "--consensus-ranks",
        "2,4,8,16",
        [
            ("flexi_benefit_nscale", "flexi_benefit_nscale_gated"),
            ("flexi_benefit_nscale_seed1", "flexi_benefit_nscale_seed1_gated"),  # a seed of a gated run
            ("flexi_nested", "flexi_nested"),  # not gated: its own adapter
        ],
    )
    gate = next(i for i, c in enumerate(calls) if c[0] == "gate" and "flexi_benefit_nscale/" in c[1])
    first = next(i for i, n in enumerate(names) if "flexi_benefit_nscale_consensus" in str(calls[i]))
    assert gate < first  # the gated adapter exists before its consensus is evaluated
    assert not any(k.startswith("static_r16_consensus") for k in evals)
    (compare,) = [c for c in calls if c[0] == "compare"]
    assert sum("_consensus/" in a for a in compare) == 6
    bad, calls = _refused(tmp_path / "one", "--consensus", "4")
    assert bad.returncode == 2 and "--consensus needs two or more ranks" in bad.stderr
    assert not calls.exists()


@pytest.mark.parametrize(
    "run, parent",
    [
        ("static_r16_keep", "static_r16"),
        ("static_r16_keep3", "static_r16"),
        ("flexi_benefit_nscale_keep", "flexi_benefit_nscale"),
        ("flexi_benefit_nscale_keep3", "flexi_benefit_nscale"),
        ("static_r16_keepbc", "static_r16"),
        ("flexi_benefit_nscale_keepbc", "flexi_benefit_nscale"),
    ],
)
def test_a_keep_base_run_is_its_parent_with_the_term_on(run: str, parent: str) -> None:
    conf = RECIPES / "synthetic" / "conf"
    keep, base = to_dict(load_config(conf / f"{run}.yaml")), to_dict(load_config(conf / f"{parent}.yaml"))
    term = keep["train"].pop("keep_base")
    assert term["weight"] > 0 and base["train"].pop("keep_base")["weight"] == 0
    assert term["tokens"] == ("base_correct" if run.endswith("_keepbc") else "all")
    for d in (keep, base):
        d.pop("name"), d.pop("output_dir")
    assert keep == base


def test_the_cpu_profile_trains_the_keep_run_when_named_on_every_real_recording(tmp_path: Path) -> None:
    """static_r16_keep is off the cpu profile's default list; named, it trains as a static run
    and is paired against static r16; --real-examples all scores every real recording,
    N a seeded sample of N, anything else is refused."""
    calls = run_stages(
        tmp_path,
        "cpu",
        "--stage",
        "3",
        "--real",
        "data/real",
        "--runs",
        "static_r16 static_r16_keep static_r16_keep3",
        "--real-examples",
        "all",
    )
    trained = [c[c.index("--config") + 1].rsplit("/", 1)[1] for c in calls if c[0] == "train"]
    assert trained == ["static_r16.yaml", "static_r16_keep.yaml", "static_r16_keep3.yaml"]
    evals = _evals(calls)
    assert {"static_r16_keep/eval_test", "static_r16_keep/eval_real"} <= set(evals)
    assert not any("--max-examples" in c for c in evals.values())
    (compare,) = [c for c in calls if c[0] == "compare"]
    assert _baselines(compare) == ["base", "static_r16", "static_r16_keep", "static_r16_keep3"]
    for sub in ("default", "n"):
        (tmp_path / sub).mkdir()
    default = run_stages(tmp_path / "default", "cpu", "--real", "data/real")
    assert not any("static_r16_keep" in " ".join(c) for c in default)
    sample = _evals(run_stages(tmp_path / "n", "cpu", "--real", "data/real", "--real-examples", "100"))
    assert all(c[c.index("--max-examples") + 1] == "100" for k, c in sample.items() if "eval_real" in k)
    for bad in ("0", "some"):
        out, _ = _refused(tmp_path / f"bad{bad}", "--real-examples", bad)
        assert out.returncode == 2 and "--real-examples must be a positive number or all" in out.stderr


def test_real_30s_scores_the_cpu_profiles_adapters_on_real_speech_at_the_full_window(tmp_path: Path) -> None:
    """The cpu profile scores adapters on real speech at their own 10-s window only, unless
    --real-30s asks for the 30-s window too (the base model gets both either way); the
    30-s scores are what stage 7 pairs an adapter with the base on."""
    (tmp_path / "off").mkdir()
    off = _evals(run_stages(tmp_path / "off", "cpu", "--real", "data/real", "--runs", "static_r16"))
    assert {"base/eval_real", "base/eval_real_30s", "static_r16/eval_real"} <= set(off)
    assert "static_r16/eval_real_30s" not in off
    (tmp_path / "on").mkdir()
    calls = run_stages(
        tmp_path / "on", "cpu", "--real", "data/real", "--runs", "static_r16 static_r16_keep", "--real-30s"
    )
    evals = _evals(calls)
    for r in ("static_r16", "static_r16_keep"):
        c = evals[f"{r}/eval_real_30s"]
        assert c[c.index("--audio-ctx") + 1] == "1500" and c[c.index("--data") + 1] == "data/real"
        assert c[c.index("--adapter") + 1].endswith(f"{r}/adapter")
    (compare,) = [c for c in calls if c[0] == "compare"]
    assert any(a.endswith("static_r16_keep/eval_real_30s") for a in compare)


def test_a_rerun_evaluates_again_only_what_it_asks_differently(tmp_path: Path) -> None:
    """Finished evaluations are skipped on a re-run with the same arguments; one with other
    arguments (here fewer real recordings) evaluates those again, so stage 7 never pairs
    results scored on different utterances; results written before the record are kept.
    Fails if evaluate() skips on results.json alone or re-runs everything."""
    calls_file = tmp_path / "calls.txt"
    args = ("--real", "data/real", "--runs", "static_r16", "--stop-stage", "6")
    first = _evals(run_stages(tmp_path, "cpu", *args))
    assert "static_r16/eval_real" in first and "base/eval_real" in first
    calls_file.write_text("")
    assert _evals(run_stages(tmp_path, "cpu", *args)) == {}
    calls_file.write_text("")
    again = _evals(run_stages(tmp_path, "cpu", *args, "--real-examples", "5"))
    assert set(again) == {"base/eval_real", "base/eval_real_30s", "static_r16/eval_real"}
    assert all(c[c.index("--max-examples") + 1] == "5" for c in again.values())
    # a result without the record (an older run's) is kept whatever is asked now
    (tmp_path / "exp" / "static_r16" / "eval_real" / "eval_args.txt").unlink()
    calls_file.write_text("")
    assert "static_r16/eval_real" not in _evals(run_stages(tmp_path, "cpu", *args))
