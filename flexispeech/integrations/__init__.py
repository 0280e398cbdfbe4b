"""Bridges to other libraries' training loops. Each module imports its library, so import
the one you use: ``from flexispeech.integrations.hf import FlexiSeq2SeqTrainer``."""
