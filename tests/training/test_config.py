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


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("train.max_steps=0", "train.max_steps"),
        ("train.max_steps=-1", "train.max_steps"),
        ("train.batch_size=0", "train.batch_size"),
        ("train.lr=-1", "train.lr"),
        ("train.lr=.nan", "train.lr"),
        ("train.warmup_steps=-1", "train.warmup_steps"),
        ("train.log_every=0", "train.log_every"),
        ("routing.label_noise=1.5", "routing.label_noise"),
        ("eval.batch_size=0", "eval.batch_size"),
        ("seed=-1", "seed"),
    ],
)
def test_numbers_out_of_range_name_their_key(override: str, key: str) -> None:
    """A value training cannot use fails when the config is built (before any model loads),
    as one line naming the key, not as a traceback from inside training."""
    with pytest.raises(ConfigError, match=rf"^command-line override '{override}': {key}: expected a value"):
        load_config(None, [override])


def test_range_limits_themselves_are_allowed(tmp_path) -> None:
    cfg = load_config(
        None, ["train.warmup_steps=0", "train.save_every=0", "train.max_grad_norm=0", "routing.label_noise=1"]
    )
    assert (cfg.train.warmup_steps, cfg.train.save_every, cfg.routing.label_noise) == (0, 0, 1.0)
    with pytest.raises(ConfigError, match=r"^.*run.yaml: train.max_steps: expected a value > 0, got 0$"):
        load_config(write(tmp_path, "train:\n  max_steps: 0\n"))
    with pytest.raises(ConfigError, match=r"train.lr: expected a number, got \[1\]"):
        load_config(None, ["train.lr=[1]"])  # was accepted as is, then failed comparing


def test_early_stopping_settings_fail_when_the_config_loads() -> None:
    with pytest.raises(ConfigError, match="train.early_stopping needs train.eval_every"):
        load_config(None, ["train.early_stopping={patience: 2}"])


def test_unknown_override_key_blames_the_command_line_not_the_file(tmp_path) -> None:
    path = write(tmp_path, "train:\n  max_steps: 5\n")
    with pytest.raises(
        ConfigError,
        match=r"^command-line override 'train.max_stepz=1': unknown key 'train.max_stepz' "
        r"\(did you mean train.max_steps\?\)",
    ):
        load_config(path, ["train.max_stepz=1"])
    with pytest.raises(ConfigError, match=r"unknown key 'train.early_stopping.patiense'"):
        load_config(path, ["train.early_stopping.patiense=1"])
    # a key in the file is still the file's; a mapping field takes any key below it
    assert load_config(path, ["routing.weights.snr_db=2"]).routing.weights["snr_db"] == 2.0
    with pytest.raises(ConfigError, match=r"run.yaml: unknown key 'train.lrr'"):
        load_config(write(tmp_path, "train:\n  lrr: 1\n"), ["train.lr=0.1"])
