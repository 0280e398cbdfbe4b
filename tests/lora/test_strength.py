"""``flexispeech scale``: an adapter at a fraction of its strength is the exact interpolation
between the base model and the adapter, at every rank, for every consumer of the files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from lora_models import TinyNet

from flexispeech import ThresholdRouter, attach_router, load_adapter, save_adapter, use_ranks
from flexispeech.cli import main
from flexispeech.lora import get_router


def _fresh_copy(tiny: TinyNet, adapter: Path) -> TinyNet:
    """A new TinyNet with ``tiny``'s base weights and the adapter loaded from ``adapter``."""
    fresh = TinyNet()
    fresh.load_state_dict({k: v for k, v in tiny.state_dict().items() if "lora_" not in k}, strict=False)
    fresh.q_proj.load_state_dict(tiny.q_proj.base_layer.state_dict())
    fresh.fc2.load_state_dict(tiny.fc2.base_layer.state_dict())
    return load_adapter(fresh, adapter)


def test_half_strength_is_half_way_between_base_and_adapter(tiny: TinyNet, tmp_path: Path, capsys) -> None:
    """Each adapted layer's change of output at strength 0.3 is 0.3 times the full adapter's,
    at every rank and in a mixed-rank batch; the router travels with the copy; scaling a
    scaled copy multiplies (the config says 0.15). Fails if the scale is not applied, or
    applied to only some ranks."""
    router = ThresholdRouter((1, 4), weights={"snr_db": -1.0}, thresholds=(0.0,))
    attach_router(tiny, router)
    save_adapter(tiny, tmp_path / "full")
    assert main(["scale", str(tmp_path / "full"), "--strength", "0.3", "--out", str(tmp_path / "s03")]) == 0
    assert "at strength 0.3" in capsys.readouterr().out
    full, scaled = _fresh_copy(tiny, tmp_path / "full"), _fresh_copy(tiny, tmp_path / "s03")
    x = torch.randn(4, 2, 6)
    for ranks in ([1, 1, 1, 1], [2, 2, 2, 2], [4, 4, 4, 4], [0, 1, 2, 4]):
        for layer in ("q_proj", "fc2"):
            inp = x if layer == "q_proj" else torch.randn(4, 2, getattr(full, layer).in_features)
            with use_ranks(full, [0] * 4):
                base = getattr(full, layer)(inp)
            with use_ranks(full, ranks):
                delta = getattr(full, layer)(inp) - base
            with use_ranks(scaled, ranks):
                delta_scaled = getattr(scaled, layer)(inp) - base
            assert delta.abs().max() > 1e-3 or ranks[0] == 0
            torch.testing.assert_close(delta_scaled, 0.3 * delta, rtol=1e-4, atol=1e-6)
    sig = {"snr_db": torch.tensor([5.0, -5.0])}
    assert torch.equal(get_router(scaled)(sig), router(sig))
    assert main(["scale", str(tmp_path / "s03"), "--strength", "0.5", "--out", str(tmp_path / "s015")]) == 0
    meta = json.loads((tmp_path / "s015" / "adapter_config.json").read_text())["config"]["metadata"]
    assert meta["strength"] == pytest.approx(0.15)


def test_bad_strength_and_output_are_one_line_errors(tiny: TinyNet, tmp_path: Path, capsys) -> None:
    save_adapter(tiny, tmp_path / "full")
    before = sorted(p.name for p in (tmp_path / "full").iterdir())
    for strength in ("0", "-1", "inf", "nan"):  # inf wrote Infinity into the JSON and decoded "!!!!"
        assert (
            main(["scale", str(tmp_path / "full"), "--strength", strength, "--out", str(tmp_path / "x")]) == 2
        )
        err = capsys.readouterr().err
        assert "strength must be a finite number > 0" in err and "Traceback" not in err
    assert not (tmp_path / "x").exists()
    assert main(["scale", str(tmp_path / "full"), "--strength", "0.5", "--out", str(tmp_path / "full")]) == 2
    assert "another directory" in capsys.readouterr().err
    assert main(["scale", str(tmp_path / "nothing"), "--strength", "0.5", "--out", str(tmp_path / "y")]) == 2
    assert "nothing" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "full").iterdir()) == before  # nothing lost


def _delta(model: TinyNet, layer: str, inp: torch.Tensor, ranks: list[int]) -> torch.Tensor:
    with use_ranks(model, [0] * len(ranks)):
        base = getattr(model, layer)(inp)
    with use_ranks(model, ranks):
        return getattr(model, layer)(inp) - base


def test_modules_scales_only_the_matching_layers(tiny: TinyNet, tmp_path: Path, capsys) -> None:
    """--modules q_proj --strength 0 switches q_proj's adapter off and leaves fc2's as it was;
    --modules fc2 --strength 0.5 halves fc2's alone. Fails if the regex is ignored (every
    layer scaled) or the weights are not rewritten."""
    save_adapter(tiny, tmp_path / "full")
    args = [
        "scale",
        str(tmp_path / "full"),
        "--modules",
        "q_proj",
        "--strength",
        "0",
        "--out",
        str(tmp_path / "noq"),
    ]
    assert main(args) == 0
    assert "1 modules matching 'q_proj' at strength 0" in capsys.readouterr().out
    args = [
        "scale",
        str(tmp_path / "full"),
        "--modules",
        "fc2$",
        "--strength",
        "0.5",
        "--out",
        str(tmp_path / "fc2"),
    ]
    assert main(args) == 0
    full, noq, half_fc2 = (_fresh_copy(tiny, tmp_path / d) for d in ("full", "noq", "fc2"))
    for ranks in ([1, 1], [4, 4], [0, 2]):
        x = torch.randn(2, 3, 6)
        h = torch.randn(2, 3, full.fc2.in_features)
        assert _delta(full, "q_proj", x, ranks).abs().max() > 1e-3 or ranks[0] == 0
        assert _delta(noq, "q_proj", x, ranks).abs().max() == 0  # off: the base layer exactly
        torch.testing.assert_close(_delta(noq, "fc2", h, ranks), _delta(full, "fc2", h, ranks))
        torch.testing.assert_close(_delta(half_fc2, "fc2", h, ranks), 0.5 * _delta(full, "fc2", h, ranks))
        torch.testing.assert_close(_delta(half_fc2, "q_proj", x, ranks), _delta(full, "q_proj", x, ranks))
    meta = json.loads((tmp_path / "noq" / "adapter_config.json").read_text())["config"]["metadata"]
    assert meta["module_strengths"] == {"q_proj": {"strength": 0.0, "modules": 1}}


def test_modules_errors_are_one_line(tiny: TinyNet, tmp_path: Path, capsys) -> None:
    save_adapter(tiny, tmp_path / "full")
    base = ["scale", str(tmp_path / "full"), "--out", str(tmp_path / "x")]
    for extra, message in (
        (["--modules", "encoder", "--strength", "0"], "matches none of the adapter's 2 modules"),
        (["--modules", "(", "--strength", "0"], "not a regular expression"),
        (["--modules", "fc2", "--strength", "-1"], "strength must be a finite number >= 0"),
        (["--modules", "fc2", "--strength", "inf"], "strength must be a finite number >= 0"),
    ):
        assert main([*base, *extra]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err
    assert not (tmp_path / "x").exists()
