"""Exports of an adapter for deployment: merged transformers models, PEFT LoRA, CTranslate2."""

from flexispeech.export.exporter import TARGETS, export_adapter
from flexispeech.export.merged import load_adapted, write_merged
from flexispeech.export.routing import RoutedModels, read_routing

__all__ = ["TARGETS", "RoutedModels", "export_adapter", "load_adapted", "read_routing", "write_merged"]
