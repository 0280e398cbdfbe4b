"""flexispeech: input-adaptive LoRA (Flexi-LoRA) for speech and text models.

The names a user imports::

    from flexispeech import FlexiLoraConfig, inject, use_ranks, ThresholdRouter
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from flexispeech.lora import (
    AdapterParameters,
    FixedRouter,
    FlexiLoraConfig,
    FlexiLoraLinear,
    LearnedRouter,
    RandomRouter,
    ThresholdRouter,
    attach_router,
    count_parameters,
    export_peft,
    from_peft,
    inject,
    load_adapter,
    merge,
    merge_for_inference,
    remove,
    route,
    save_adapter,
    unmerge,
    use_ranks,
)
from flexispeech.version import __version__

if TYPE_CHECKING:
    from flexispeech.models.sources import pretrained_path

# Heavier entry points load on first use, so `import flexispeech` stays light.
_LAZY = {"pretrained_path": "flexispeech.models.sources"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'flexispeech' has no attribute {name!r}")


__all__ = [
    "AdapterParameters",
    "FixedRouter",
    "FlexiLoraConfig",
    "FlexiLoraLinear",
    "LearnedRouter",
    "RandomRouter",
    "ThresholdRouter",
    "__version__",
    "attach_router",
    "count_parameters",
    "export_peft",
    "from_peft",
    "inject",
    "load_adapter",
    "merge",
    "merge_for_inference",
    "pretrained_path",
    "remove",
    "route",
    "save_adapter",
    "unmerge",
    "use_ranks",
]
