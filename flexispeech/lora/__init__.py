"""Nested-rank adaptive LoRA: layer, routers, injection and adapter files."""

from flexispeech.lora.config import FlexiLoraConfig
from flexispeech.lora.inject import (
    RankError,
    adapter_parameters,
    attach_router,
    flexi_layers,
    get_router,
    inject,
    merge,
    remove,
    route,
    set_compute_path,
    set_default_rank,
    use_ranks,
)
from flexispeech.lora.io import export_peft, load_adapter, save_adapter
from flexispeech.lora.layer import FlexiLoraLinear, merge_for_inference, unmerge
from flexispeech.lora.peft_import import from_peft
from flexispeech.lora.router import FixedRouter, LearnedRouter, RandomRouter, ThresholdRouter, rank_labels, router_from_dict
from flexispeech.lora.stats import AdapterParameters, count_parameters

__all__ = [
    "AdapterParameters",
    "FixedRouter",
    "FlexiLoraConfig",
    "FlexiLoraLinear",
    "LearnedRouter",
    "RandomRouter",
    "RankError",
    "ThresholdRouter",
    "adapter_parameters",
    "attach_router",
    "count_parameters",
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
    "unmerge",
    "use_ranks",
]
