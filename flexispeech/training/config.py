"""Run configuration: dataclasses are the schema, YAML files are recipe instances.

Loading is strict: an unknown key, a duplicated key or a value of the wrong type is a
``ConfigError`` that names the key (and the file). ``key=value`` overrides use dotted
paths (``train.lr=3e-4``) and YAML syntax for the value.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from flexispeech.data.augment import AugmentConfig
from flexispeech.errors import ConfigError
from flexispeech.lora.config import FlexiLoraConfig
from flexispeech.training.early_stopping import EarlyStoppingConfig


@dataclass
class ModelConfig:
    family: str = "whisper"
    """Model family: whisper, wav2vec2 or causal_lm."""
    source: str = "whisper-tiny.en"
    """What ``pretrained_path`` resolves: a bundled name, a local directory or a hub id."""
    audio_ctx: int | None = None
    """Whisper only: encoder positions to keep (1500 = 30 s; 500 = 10 s). Shorter is much
    cheaper on CPU; utterances must fit (longer ones are dropped from training)."""
    cache_encoder_layers: int = 0
    """Whisper only: the first N encoder layers get no adapters and their output is
    computed once per training utterance and cached (single process only). N = every
    layer trains the decoder alone on cached encoder states: the cheapest CPU setting."""


@dataclass
class DataConfig:
    corpus: str = "data/synthetic"
    """A corpus directory written by ``flexispeech prepare``."""
    train_split: str = "train"
    eval_split: str = "validation"
    max_train_examples: int | None = None
    """Use only the first N training rows (after shuffling by seed)."""
    max_duration: float | None = None
    """Drop training utterances longer than this many seconds."""
    target: str = "answer"
    """Text tasks: what the model learns to write, ``answer`` (the short gold answer) or
    ``solution`` (the worked solution; math: steps ending in ``#### N``)."""


# The library's adapter defaults: the run schema takes these, never its own, so a run and
# ``flexispeech.inject`` agree on what an unset field means.
_LORA_DEFAULTS = FlexiLoraConfig()


@dataclass
class AdapterConfig:
    """The run's adapter: the fields of ``FlexiLoraConfig`` (which documents each) with its
    defaults, in YAML types (lists for tuples); ``to_lora`` makes the FlexiLoraConfig.

    Two differences, both filled in by the run: ``target_modules`` None means the model
    family's default targets, and ``metadata`` (facts saved with the adapter) is not here.
    """

    ranks: list[int] = field(default_factory=lambda: list(_LORA_DEFAULTS.ranks))
    """Allowed ranks; static LoRA uses one rank, e.g. [8]."""
    alpha: float = _LORA_DEFAULTS.alpha
    scaling: str = _LORA_DEFAULTS.scaling
    """standard (alpha/r), rslora (alpha/sqrt(r)) or nested (alpha/r_max at every rank:
    lower ranks are exact truncations of the top one)."""
    rank_scales: dict[int, float] | None = _LORA_DEFAULTS.rank_scales
    target_modules: list[str] | str | None = None
    """Module-name suffixes to adapt, or one regex the whole module name must match (as
    PEFT's string form; e.g. the encoder's projections only); None = the family's defaults.
    A regex cannot be combined with ``model.cache_encoder_layers`` (the cache narrows a
    list of suffixes to the layers it does not freeze; a regex it cannot rewrite)."""
    dropout: float = _LORA_DEFAULTS.dropout
    init: str = _LORA_DEFAULTS.init
    compute_path: str = _LORA_DEFAULTS.compute_path

    def __post_init__(self) -> None:
        # Checked when the config is loaded (a typo in scaling fails before any model loads).
        try:
            self.to_lora(target_modules=self.target_modules or _LORA_DEFAULTS.target_modules)
        except ConfigError as err:
            raise ConfigError(f"adapter.{err}") from None

    def to_lora(self, **fields: Any) -> FlexiLoraConfig:
        """The ``FlexiLoraConfig`` of these fields, ``fields`` (e.g. the resolved
        ``target_modules`` and the ``metadata``) replacing or adding to them."""
        data = {**dataclasses.asdict(self), **fields}
        if data["target_modules"] is None:
            raise ConfigError("adapter.target_modules: resolve the family's default targets before to_lora")
        return FlexiLoraConfig.from_dict(data)


@dataclass
class RoutingConfig:
    mode: str = "fixed"
    """fixed (static LoRA) | random (nested training, served at ``rank``) | threshold |
    learned | inconsistent (random ranks in training, ``inference_router`` at inference)."""
    rank: int | None = None
    """fixed/random: the rank to serve at (default: the largest)."""
    target_mean_rank: float | None = None
    """threshold/learned: mean rank the router is calibrated to (default: r_max / 2)."""
    weights: dict[str, float] = field(default_factory=lambda: {"proxy": 1.0, "snr_db": -0.5})
    """threshold: signal weights of the complexity score (higher = harder)."""
    features: list[str] = field(default_factory=lambda: ["snr_db", "proxy", "duration", "speech_activity"])
    """learned: the signals the MLP reads; ``embedding`` (the pooled base-encoder output,
    ``flexispeech signals --embedding``) is a vector signal of d_model columns."""
    difficulty: str = "base_wer"
    """learned: the per-example column used as difficulty label (harder = higher rank)."""
    label_noise: float = 0.0
    inference_router: str = "threshold"
    """inconsistent: the router used at inference (threshold or learned)."""


@dataclass
class NestedConfig:
    """Nested-rank training (DyLoRA-style): besides its routed rank, each training example
    also contributes a loss at a second, sampled rank, so every truncation of the adapter
    is trained, not only the ranks the router happens to pick (``flexispeech.training.nested``)."""

    prob: float = 0.0
    """Share of a batch's rows that also train at a sampled rank; 0 turns nesting off."""
    weight: float = 1.0
    """Weight of the sampled-rank loss: loss = (L_routed + weight * L_sampled) / (1 + weight)."""
    mode: str = "lower"
    """lower: a positive rank below the routed one (rows at the lowest positive rank or at 0
    get none) | random: any positive rank other than the routed one (rows routed to 0 too)."""
    forward: str = "joint"
    """joint: the sampled rows ride in the same forward pass as the batch (rows duplicated,
    re-sorted by rank) | separate: a second forward pass on the sampled rows."""

    def __post_init__(self) -> None:
        # Checked when the config is loaded: a typo fails before any model loads.
        if not 0.0 <= self.prob <= 1.0:
            raise ConfigError(f"train.nested.prob: expected a share in [0, 1], got {self.prob}")
        if self.weight <= 0:
            raise ConfigError(f"train.nested.weight: expected a positive weight, got {self.weight}")
        if self.mode not in ("lower", "random"):
            raise ConfigError(f"train.nested.mode: expected lower or random, got {self.mode!r}")
        if self.forward not in ("joint", "separate"):
            raise ConfigError(f"train.nested.forward: expected joint or separate, got {self.forward!r}")


@dataclass
class KeepBaseConfig:
    """Distillation towards the base model: each training token also pays the KL divergence
    from the base model's next-token distribution to the adapted one, so the adapter keeps
    what the base model already does well (``flexispeech.training.keep_base``)."""

    weight: float = 0.0
    """Weight of the KL term: loss = CE + weight * KL; 0 turns it off."""
    tokens: str = "all"
    """all: every label token pays it | base_correct: only tokens the base model already
    predicts right (its argmax is the label)."""

    def __post_init__(self) -> None:
        if self.weight < 0:
            raise ConfigError(f"train.keep_base.weight: expected 0 or a positive weight, got {self.weight}")
        if self.tokens not in ("all", "base_correct"):
            raise ConfigError(f"train.keep_base.tokens: expected all or base_correct, got {self.tokens!r}")


@dataclass
class TrainConfig:
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 10
    max_steps: int = 100
    schedule: str = "linear"
    """linear | cosine | constant (after warm-up)."""
    max_grad_norm: float = 1.0
    mixed_precision: str = "no"
    """no | bf16 | fp16 (GPU); passed to accelerate."""
    log_every: int = 5
    save_every: int = 50
    """A resumable checkpoint every this many optimizer steps (0: never)."""
    bucket_by_length: bool = True
    eval_every: int = 0
    """Validation loss every this many optimizer steps on ``data.eval_split`` (0: never),
    overall and per rank, in train_log.jsonl (``training.early_stopping``)."""
    eval_examples: int = 256
    """Validation rows (a seeded sample of the split, the same at every validation)."""
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    """Keep the best adapter by validation loss and stop when it stops improving."""
    num_workers: int = 0
    """DataLoader worker processes that collate batches (decode audio, extract features);
    0 collates in the training process. Rows and ranks are planned in the training
    process, so any number gives the same run, bit for bit."""
    cuda_graphs: bool = True
    """On a GPU, replay each training step's forward + backward from a CUDA graph (one per
    batch shape; ``flexispeech.training.graphs``); false: eager steps. Taken only where it
    is safe (one process, no grad_accum, no mixed precision); otherwise the log says why."""
    features_on_device: bool = True
    """On a GPU, Whisper's log-mel features are made in the training process on the GPU
    from the audio the loader's workers read (``training.augmented.DeviceFeatures``);
    false: in the workers, on their CPUs. Augmented batches are always featurised there."""
    nested: NestedConfig = field(default_factory=NestedConfig)
    """Nested-rank training: each example also trains at a sampled rank (off by default)."""
    keep_base: KeepBaseConfig = field(default_factory=KeepBaseConfig)
    """Distillation towards the base model's predictions (off by default)."""


@dataclass
class EvalConfig:
    split: str = "test"
    batch_size: int = 16
    num_beams: int = 1
    max_examples: int | None = None


@dataclass
class RunConfig:
    """One training run (a recipe's conf/*.yaml)."""

    name: str = "run"
    output_dir: str = "exp/run"
    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    routing: RoutingConfig = field(default_factory=RoutingConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def __post_init__(self) -> None:
        self.check()  # here, not only when training starts: before any model loads
        if isinstance(self.adapter.target_modules, str) and self.model.cache_encoder_layers:
            raise ConfigError(
                f"adapter.target_modules: a regex ({self.adapter.target_modules!r}) cannot be combined "
                f"with model.cache_encoder_layers={self.model.cache_encoder_layers}: list module-name "
                "suffixes, or set model.cache_encoder_layers: 0"
            )

    def check(self) -> None:
        """ConfigError (one line) for values that cannot work: the numeric ranges
        (``_RANGES``) and the early-stopping settings. Run when the config is built, and
        again by the trainer on the config it is given (its fields may be set after)."""
        _check_ranges(self)
        self.train.early_stopping.check(self.train.eval_every)


# The numeric fields' allowed values, checked when a RunConfig is built so that a value
# that cannot work (train.max_steps=0, train.lr=-1) is a one-line error naming its key
# before any model loads or anything is written, not a traceback deep inside training.
# "> 0": a count or size that must be positive; ">= 0": 0 turns it off or means none;
# "in [0, 1]": a share or probability. None (an unset optional) is not checked. The
# sections with their own __post_init__ (adapter, train.nested, train.keep_base,
# augment) and train.early_stopping (EarlyStoppingConfig.check) check their fields.
_RANGES: dict[str, str] = {
    "seed": ">= 0",  # numpy's seed refuses negatives
    "model.audio_ctx": "> 0",
    "model.cache_encoder_layers": ">= 0",
    "data.max_train_examples": "> 0",
    "data.max_duration": "> 0",
    "routing.target_mean_rank": ">= 0",
    "routing.label_noise": "in [0, 1]",
    "train.batch_size": "> 0",
    "train.grad_accum": "> 0",
    "train.lr": "> 0",
    "train.weight_decay": ">= 0",
    "train.warmup_steps": ">= 0",
    "train.max_steps": "> 0",
    "train.max_grad_norm": ">= 0",  # 0: no clipping
    "train.log_every": "> 0",
    "train.save_every": ">= 0",  # 0: no checkpoints
    "train.eval_every": ">= 0",  # 0: no validation
    "train.eval_examples": "> 0",
    "train.num_workers": ">= 0",
    "eval.batch_size": "> 0",
    "eval.num_beams": "> 0",
    "eval.max_examples": "> 0",
}


def _in_range(value: float, rule: str) -> bool:
    # Written so that NaN (which YAML's .nan gives) fails every rule.
    if rule == "> 0":
        return value > 0
    if rule == ">= 0":
        return value >= 0
    return 0 <= value <= 1


def _check_ranges(cfg: RunConfig) -> None:
    """ConfigError naming the first field of ``_RANGES`` whose value is out of its range."""
    for key, rule in _RANGES.items():
        value: Any = cfg
        for part in key.split("."):
            value = getattr(value, part)
        if value is not None and not _in_range(value, rule):
            raise ConfigError(f"{key}: expected a value {rule}, got {value!r}")


class _StrictLoader(yaml.SafeLoader):
    """A SafeLoader that rejects duplicated mapping keys (PyYAML keeps the last silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, Any] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise ConfigError(f"duplicated key {key!r} (line {key_node.start_mark.line + 1})")
            seen[key] = True
        return super().construct_mapping(node, deep=deep)


def _check_type(value: Any, hint: Any, key: str) -> Any:
    """Check (and lightly coerce: int -> float) ``value`` against a type hint."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in typing.get_args(hint):
            return None
        errors = []
        for arg in typing.get_args(hint):
            if arg is type(None):
                continue
            try:
                return _check_type(value, arg, key)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if errors else f"{key}: invalid value {value!r}")
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):
        # YAML 1.1 (PyYAML) reads "3e-4" as a string: it wants "3.0e-4". Accept both.
        try:
            return float(value)
        except ValueError:
            raise ConfigError(f"{key}: expected a number, got {value!r}") from None
    if hint is float:  # a list, a mapping or a bool is no number (nor would the range checks run)
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if hint is str and value is False and key.endswith("mixed_precision"):
        # YAML 1.1 (PyYAML) reads a bare `no`, accelerate's name for full precision, as false.
        return "no"
    if hint in (int, str, bool):
        if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
            raise ConfigError(f"{key}: expected {hint.__name__}, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (item,) = typing.get_args(hint)
        return [_check_type(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        k_hint, v_hint = typing.get_args(hint)
        return {_check_type(k, k_hint, key): _check_type(v, v_hint, f"{key}.{k}") for k, v in value.items()}
    return value


def from_dict(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """Build dataclass ``cls`` from nested dicts, naming any unknown or mistyped key."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if key not in fields:
            close = difflib.get_close_matches(str(key), fields, n=1)
            hint = f" (did you mean {prefix}{close[0]}?)" if close else ""
            raise ConfigError(f"unknown key {path!r}{hint}; known keys here: {sorted(fields)}")
        hint_type = hints[key]
        if dataclasses.is_dataclass(hint_type):
            kwargs[key] = from_dict(hint_type, value or {}, prefix=f"{path}.")
        else:
            kwargs[key] = _check_type(value, hint_type, path)
    return cls(**kwargs)


def to_dict(config: Any) -> dict[str, Any]:
    """The nested-dict form of a config (what ``from_dict`` reads back)."""
    return dataclasses.asdict(config)


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` strings (values parsed as YAML) to nested ``data``."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value, e.g. train.lr=3e-4")
        key, raw = item.split("=", 1)
        value = yaml.load(raw, Loader=_StrictLoader) if raw else None
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a section")
        node[parts[-1]] = value
    return data


def _deep_merge(base: dict[str, Any], child: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in child.items():
        out[key] = (
            _deep_merge(out[key], value)
            if isinstance(value, dict) and isinstance(out.get(key), dict)
            else value
        )
    return out


def read_yaml(path: Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A config file as nested dicts; ``extends: other.yaml`` (relative to the file) loads
    that file first and merges this one over it, so recipe variants stay short."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    if path.resolve() in _seen:
        raise ConfigError(f"{path}: 'extends' loops back to itself")
    try:
        data = yaml.load(path.read_text(), Loader=_StrictLoader) or {}
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: invalid YAML ({err})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    parent = data.pop("extends", None)
    if parent is not None:
        data = _deep_merge(read_yaml(path.parent / str(parent), (*_seen, path.resolve())), data)
    return data


def _check_override_key(item: str, cls: type = RunConfig) -> None:
    """ConfigError blaming the command-line override ``item`` (``key=value``) when its key
    is not in the schema: checked before the merge, which would blame the YAML file."""
    parts = item.split("=", 1)[0].strip().split(".")
    for depth, part in enumerate(parts):
        if not dataclasses.is_dataclass(cls):
            return  # below a mapping field (routing.weights.snr_db) any key may go
        fields = {f.name for f in dataclasses.fields(cls)}
        if part not in fields:
            prefix = "".join(f"{p}." for p in parts[:depth])
            close = difflib.get_close_matches(part, fields, n=1)
            hint = f" (did you mean {prefix}{close[0]}?)" if close else ""
            raise ConfigError(
                f"command-line override {item!r}: unknown key {prefix + part!r}{hint}; "
                f"known keys here: {sorted(fields)}"
            )
        cls = typing.get_type_hints(cls)[part]


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> RunConfig:
    """Load a ``RunConfig`` from a YAML file (or defaults when ``path`` is None) plus
    ``key=value`` overrides. Errors name the file and the key; an unknown key in an
    override names the override."""
    data = read_yaml(Path(path)) if path is not None else {}
    for item in overrides or []:
        _check_override_key(item)
    try:
        return from_dict(RunConfig, apply_overrides(data, overrides or []))
    except ConfigError as err:
        raise ConfigError(f"{_source(str(err), path, overrides or [])}: {err}") from None


def _source(message: str, path: str | Path | None, overrides: list[str]) -> str:
    """Where the value an error ``message`` names came from: the last command-line override
    of the key it starts with, else the YAML file."""
    for item in reversed(overrides):
        key = item.split("=", 1)[0].strip()
        if any(message.startswith(key + end) for end in (":", ".", "[")):
            return f"command-line override {item!r}"
    return str(path or "config")
