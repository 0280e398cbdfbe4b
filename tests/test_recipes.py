"""Every recipe config loads strictly, and every run.sh parses and prints its help."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from flexispeech.training.config import load_config

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
CONFIGS = sorted(RECIPES.glob("*/conf/*.yaml"))
SCRIPTS = sorted(RECIPES.glob("*/run.sh")) + [RECIPES / "speech_stages.sh"]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: f"{p.parent.parent.name}/{p.name}")
def test_config_loads(path: Path) -> None:
    cfg = load_config(path)
    if path.stem != "common":
        assert cfg.name == path.stem and cfg.output_dir.endswith(path.stem)
        assert path.read_text().startswith(
            f"# flexispeech train --config recipes/{path.parent.parent.name}/conf/{path.name}"
        )


def test_real_corpus_recipes_match_the_synthetic_runs() -> None:
    for corpus in ("librispeech", "commonvoice"):
        for name in ("static_r8", "static_r16", "flexi_threshold", "flexi_learned", "inconsistent"):
            ours, synthetic = (
                load_config(RECIPES / corpus / "conf" / f"{name}.yaml"),
                load_config(RECIPES / "synthetic" / "conf" / f"{name}.yaml"),
            )
            assert ours.adapter == synthetic.adapter and ours.routing == synthetic.routing
            assert ours.data.corpus == f"data/{corpus}"


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(RECIPES)))
def test_script_parses_and_has_help(script: Path) -> None:
    subprocess.run(["bash", "-n", str(script)], check=True)
    out = subprocess.run(["bash", str(script), "--help"], capture_output=True, text=True, check=True).stdout
    assert "--stage" in out


@pytest.mark.parametrize(
    "args, message",
    [
        (["--profile", "tpu"], "--profile must be cpu or gpu"),
        (["--size", "huge"], "--size must be one of"),
        (["--bogus"], "unknown option --bogus"),
    ],
)
def test_text_recipes_reject_bad_options_before_doing_anything(
    args: list[str], message: str, tmp_path: Path
) -> None:
    for task in ("math", "qa"):
        done = subprocess.run(
            ["bash", str(RECIPES / task / "run.sh"), *args, "--exp", str(tmp_path / "exp")],
            capture_output=True,
            text=True,
            cwd=RECIPES.parent,
            env={"PATH": "/usr/bin:/bin", "FLEXISPEECH": "false"},
        )
        assert done.returncode == 2 and message in done.stderr
        assert not (tmp_path / "exp").exists()
