"""The package version, in a module of its own: ``lora.io`` writes it into saved adapters, and
reading it from ``flexispeech/__init__.py`` (which imports ``lora``) would be an import cycle."""

__version__ = "0.1.0"
