"""Strict YAML configs: unknown, duplicated and mistyped keys name themselves."""

from __future__ import annotations

import pytest

from flexispeech.errors import ConfigError
from flexispeech.training.config import RunConfig, load_config


def write(tmp_path, text: str):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


def test_load_with_overrides(tmp_path) -> None:
    path = write(tmp_path, "name: r\nadapter:\n  ranks: [0, 4, 8]\ntrain:\n  lr: 1\n  max_steps: 5\n")
    cfg = load_config(path, ["train.lr=3e-4", "routing.mode=threshold", "routing.weights={snr_db: -2}"])
    assert isinstance(cfg, RunConfig)
    assert cfg.adapter.ranks == [0, 4, 8] and cfg.train.max_steps == 5
    assert cfg.train.lr == pytest.approx(3e-4) and isinstance(cfg.train.lr, float)
    assert cfg.routing.mode == "threshold" and cfg.routing.weights == {"snr_db": -2.0}
    assert cfg.model.audio_ctx is None and cfg.eval.split == "test"  # defaults


def test_unknown_key_is_named_with_a_suggestion(tmp_path) -> None:
    path = write(tmp_path, "train:\n  lrr: 0.1\n")
    with pytest.raises(ConfigError, match=r"run.yaml: unknown key 'train.lrr' \(did you mean train.lr\?\)"):
        load_config(path)
    with pytest.raises(ConfigError, match="unknown key 'modle'"):
        load_config(None, ["modle.source=x"])


def test_duplicated_key_is_named_with_its_line(tmp_path) -> None:
    path = write(tmp_path, "train:\n  lr: 0.1\n  lr: 0.2\n")
    with pytest.raises(ConfigError, match=r"run.yaml: duplicated key 'lr' \(line 3\)"):
        load_config(path)


def test_wrong_types_are_named(tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"train.max_steps: expected int, got 'many'"):
        load_config(write(tmp_path, "train:\n  max_steps: many\n"))
    with pytest.raises(ConfigError, match=r"adapter.ranks\[1\]: expected int"):
        load_config(None, ["adapter.ranks=[1, two]"])
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config(None, ["train.lr"])


def test_extends_merges_over_the_parent(tmp_path) -> None:
    (tmp_path / "base.yaml").write_text(
        "name: base\ntrain:\n  lr: 0.5\n  max_steps: 7\nadapter:\n  ranks: [8]\n"
    )
    child = tmp_path / "child.yaml"
    child.write_text("extends: base.yaml\nname: child\ntrain:\n  lr: 0.1\n")
    cfg = load_config(child)
    assert (cfg.name, cfg.train.lr, cfg.train.max_steps, cfg.adapter.ranks) == ("child", 0.1, 7, [8])
    (tmp_path / "loop.yaml").write_text("extends: loop.yaml\n")
    with pytest.raises(ConfigError, match="loops back"):
        load_config(tmp_path / "loop.yaml")


def test_adapter_section_is_flexi_lora_config_with_its_defaults() -> None:
    """One adapter schema: the run's section has FlexiLoraConfig's fields (but metadata,
    which the run fills in) and its defaults, and becomes one through ``to_lora``."""
    import dataclasses

    from flexispeech.lora.config import FlexiLoraConfig
    from flexispeech.training.config import AdapterConfig

    lora_fields = [f.name for f in dataclasses.fields(FlexiLoraConfig) if f.name != "metadata"]
    assert [f.name for f in dataclasses.fields(AdapterConfig)] == lora_fields
    adapter = load_config(None).adapter
    built = adapter.to_lora(target_modules=("fc1",), metadata={"run": "r"})
    assert built == FlexiLoraConfig(
        target_modules=("fc1",), metadata={"run": "r"}
    )  # every default the library's
    cfg = load_config(
        None,
        [
            "adapter.init=gaussian",
            "adapter.ranks=[4, 8]",
            "adapter.alpha=8",
            "adapter.rank_scales={4: 2.5}",
            "adapter.target_modules=[q_proj]",
        ],
    )
    lora = cfg.adapter.to_lora(target_modules=tuple(cfg.adapter.target_modules))
    assert (lora.init, lora.ranks, lora.alpha, lora.scale(4), lora.target_modules) == (
        "gaussian",
        (4, 8),
        8.0,
        2.5,
        ("q_proj",),
    )


def test_adapter_values_are_checked_when_the_config_loads(tmp_path) -> None:
    with pytest.raises(
        ConfigError, match=r"run.yaml: adapter.scaling: expected 'standard', 'rslora' or 'nested'"
    ):
        load_config(write(tmp_path, "adapter:\n  scaling: nestd\n"))
    with pytest.raises(ConfigError, match=r"adapter.init: expected 'kaiming' or 'gaussian'"):
        load_config(None, ["adapter.init=xavier"])
    with pytest.raises(ConfigError, match=r"adapter.ranks: must be sorted"):
        load_config(None, ["adapter.ranks=[8, 4]"])
    with pytest.raises(ConfigError, match=r"unknown key 'adapter.lora_alpha'"):
        load_config(None, ["adapter.lora_alpha=8"])


def test_a_bare_no_is_full_precision(tmp_path) -> None:
    """YAML reads `mixed_precision: no` (accelerate's name) as false: it still means "no";
    other mistyped strings are still refused."""
    assert load_config(write(tmp_path, "train:\n  mixed_precision: no\n")).train.mixed_precision == "no"
    assert load_config(None, ["train.mixed_precision=no"]).train.mixed_precision == "no"
    with pytest.raises(ConfigError, match=r"train.mixed_precision: expected str, got True"):
        load_config(None, ["train.mixed_precision=yes"])
    with pytest.raises(ConfigError, match=r"train.name|expected str"):
        load_config(None, ["name=no"])
