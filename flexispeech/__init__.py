"""flexispeech: input-adaptive LoRA (Flexi-LoRA) for speech and text models."""

__version__ = "0.1.0"
