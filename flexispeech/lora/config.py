"""FlexiLoraConfig: what an injection of nested-rank adapters looks like."""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from flexispeech.errors import ConfigError

Scaling = Literal["standard", "rslora", "nested"]
Init = Literal["kaiming", "gaussian"]
# "static" never syncs with the host (CUDA-graph capturable); see flexispeech.lora.kernels.
COMPUTE_PATHS = ("auto", "masked", "grouped", "segmented", "fold", "triton", "static")
ComputePath = Literal["auto", "masked", "grouped", "segmented", "fold", "triton", "static"]


@dataclass(frozen=True)
class FlexiLoraConfig:
    """Nested-rank LoRA settings shared by every adapted layer of one model.

    An example routed to rank ``r`` uses the first ``r`` rows of ``A`` and columns of ``B``
    with the scale ``scale(r)``; ``r = 0`` switches the adapter off for that example.
    """

    ranks: tuple[int, ...] = (0, 2, 4, 8, 16)
    """Allowed ranks, sorted ascending; ``r_max = ranks[-1]`` sets the parameter shapes."""
    alpha: float = 16.0
    """LoRA alpha: the numerator of the per-rank scale."""
    scaling: Scaling = "standard"
    """``"standard"``: scale(r) = alpha / r; ``"rslora"``: scale(r) = alpha / sqrt(r);
    ``"nested"``: scale(r) = alpha / r_max for every rank, so a rank-r update is exactly the
    first r components of the rank-r_max one. With ``standard``, the shared first
    components count 4x more in a rank-2 row than in a rank-8 row, and rows of different
    ranks pull them in conflicting directions; with one rank ``nested`` is ``standard``."""
    rank_scales: dict[int, float] | None = None
    """Per-rank overrides of the scale, e.g. ``{2: 4.0}``; ranks not listed use ``scaling``."""
    target_modules: tuple[str, ...] | str = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")
    """Which ``nn.Linear`` modules to adapt: a tuple of exact names or name suffixes
    (``"q_proj"`` matches ``...self_attn.q_proj``), or one string taken as a regex that
    must match the whole module name."""
    dropout: float = 0.0
    """Dropout on the adapter input (as PEFT's ``lora_dropout``)."""
    init: Init = "kaiming"
    """Initialisation of ``A``: ``"kaiming"`` (uniform, as PEFT) or ``"gaussian"``
    (std 1/r_max). ``B`` starts at zero, so an injected model starts as the base model."""
    compute_path: ComputePath = "auto"
    """How mixed-rank batches are computed: ``"masked"`` (one matmul at the batch's top
    rank, unused components zeroed), ``"grouped"`` / ``"segmented"`` (rows grouped by
    rank, truncated matmuls, so lower ranks cost fewer FLOPs), ``"fold"`` (per run of
    equal-rank rows, the update folded into the weight: the base layer's cost plus a fold
    in proportion to the rank), ``"triton"``, ``"static"`` (graph-safe) or ``"auto"``
    (chosen per call by ``plans.choose_route``)."""
    metadata: dict[str, Any] = field(default_factory=dict)
    """Free-form facts saved with the adapter (base model name, training run, ...)."""

    def __post_init__(self) -> None:
        try:
            ranks = tuple(int(r) for r in self.ranks)
        except (TypeError, ValueError):
            raise ConfigError(f"ranks: expected a list of whole numbers, got {self.ranks!r}") from None
        for name in ("alpha", "dropout"):  # a string here would fail later, as a TypeError deep inside
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ConfigError(f"{name}: expected a finite number, got {value!r}")
        if not ranks:
            raise ConfigError("ranks: at least one rank is required")
        if any(r < 0 for r in ranks):
            raise ConfigError(f"ranks: ranks must be >= 0, got {list(ranks)}")
        if list(ranks) != sorted(set(ranks)):
            raise ConfigError(f"ranks: must be sorted ascending without duplicates, got {list(ranks)}")
        if ranks[-1] == 0:
            raise ConfigError("ranks: the largest rank must be > 0")
        object.__setattr__(self, "ranks", ranks)
        if isinstance(self.target_modules, list):
            object.__setattr__(self, "target_modules", tuple(self.target_modules))
        if isinstance(self.target_modules, str):
            try:
                re.compile(self.target_modules)
            except re.error as err:
                raise ConfigError(f"target_modules: invalid regex {self.target_modules!r}: {err}") from None
        if self.scaling not in ("standard", "rslora", "nested"):
            raise ConfigError(f"scaling: expected 'standard', 'rslora' or 'nested', got {self.scaling!r}")
        if self.init not in ("kaiming", "gaussian"):
            raise ConfigError(f"init: expected 'kaiming' or 'gaussian', got {self.init!r}")
        if self.compute_path not in COMPUTE_PATHS:
            raise ConfigError(
                f"compute_path: expected one of {list(COMPUTE_PATHS)}, got {self.compute_path!r}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout: must be in [0, 1), got {self.dropout}")
        if self.rank_scales is not None:
            scales = {int(k): float(v) for k, v in self.rank_scales.items()}
            unknown = sorted(set(scales) - set(ranks))
            if unknown:
                raise ConfigError(f"rank_scales: ranks {unknown} are not in ranks {list(ranks)}")
            object.__setattr__(self, "rank_scales", scales)

    @property
    def r_max(self) -> int:
        """The largest rank: ``A`` is (r_max, in_features), ``B`` is (out_features, r_max)."""
        return self.ranks[-1]

    def scale(self, rank: int) -> float:
        """The scale applied to the rank-``rank`` update (0.0 for rank 0)."""
        if rank == 0:
            return 0.0
        if self.rank_scales and rank in self.rank_scales:
            return self.rank_scales[rank]
        if self.scaling == "rslora":
            return self.alpha / math.sqrt(rank)
        if self.scaling == "nested":
            return self.alpha / self.r_max
        return self.alpha / rank

    def scale_table(self) -> list[float]:
        """``table[r] = scale(r)`` for r in 0..r_max; ranks outside ``ranks`` get 0."""
        allowed = set(self.ranks)
        return [self.scale(r) if r in allowed else 0.0 for r in range(self.r_max + 1)]

    def matches(self, module_name: str) -> bool:
        """Whether the module called ``module_name`` is one to adapt."""
        if isinstance(self.target_modules, str):
            return re.fullmatch(self.target_modules, module_name) is not None
        return any(module_name == t or module_name.endswith("." + t) for t in self.target_modules)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable form (``from_dict`` inverts it)."""
        data = asdict(self)
        data["ranks"] = list(self.ranks)
        if not isinstance(self.target_modules, str):
            data["target_modules"] = list(self.target_modules)
        if self.rank_scales is not None:
            data["rank_scales"] = {str(k): v for k, v in self.rank_scales.items()}
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FlexiLoraConfig:
        """Build a config from ``to_dict`` output; unknown keys are an error naming them."""
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown FlexiLoraConfig keys: {unknown}; known: {sorted(known)}")
        data = dict(data)
        if isinstance(data.get("target_modules"), list):
            data["target_modules"] = tuple(data["target_modules"])
        if "ranks" in data:
            data["ranks"] = tuple(data["ranks"])
        return cls(**data)
