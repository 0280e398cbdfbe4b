"""Nested-rank adaptive LoRA: layer, routers, injection, per-example ranks and adapter files."""

from flexispeech.lora.calibration import rank_labels
from flexispeech.lora.config import FlexiLoraConfig
from flexispeech.lora.inject import (
    adapter_parameters,
    attach_router,
    flexi_layers,
    get_router,
    inject,
    merge,
    merge_for_inference,
    remove,
    route,
    set_compute_path,
    set_default_rank,
    set_static_path,
    unmerge,
)
from flexispeech.lora.io import export_peft, load_adapter, save_adapter
from flexispeech.lora.layer import FlexiLoraLinear
from flexispeech.lora.peft_import import from_peft
from flexispeech.lora.ranks import RankError, adapter_off, current_ranks, use_ranks
from flexispeech.lora.router import (
    FixedRouter,
    LearnedRouter,
    RandomRouter,
    Router,
    ThresholdRouter,
    router_from_dict,
)
from flexispeech.lora.stats import AdapterParameters, count_parameters

__all__ = [
    "AdapterParameters",
    "FixedRouter",
    "FlexiLoraConfig",
    "FlexiLoraLinear",
    "LearnedRouter",
    "RandomRouter",
    "RankError",
    "Router",
    "ThresholdRouter",
    "adapter_off",
    "adapter_parameters",
    "attach_router",
    "count_parameters",
    "current_ranks",
    "export_peft",
    "flexi_layers",
    "from_peft",
    "get_router",
    "inject",
    "load_adapter",
    "merge",
    "merge_for_inference",
    "rank_labels",
    "remove",
    "route",
    "router_from_dict",
    "save_adapter",
    "set_compute_path",
    "set_default_rank",
    "set_static_path",
    "unmerge",
    "use_ranks",
]
