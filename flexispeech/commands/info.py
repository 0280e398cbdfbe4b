"""``flexispeech info``: versions of flexispeech and the libraries it runs on."""

from __future__ import annotations

import argparse
import importlib.metadata as md

HELP = "print the versions of flexispeech and its main dependencies"

PACKAGES = ("torch", "transformers", "peft", "accelerate", "datasets", "librosa", "soundfile", "jiwer")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """No options."""


def run(args: argparse.Namespace) -> int:
    """Print one ``name version`` line per package (``missing`` when not installed)."""
    from flexispeech import __version__

    print(f"flexispeech {__version__}")
    for name in PACKAGES:
        try:
            print(f"{name} {md.version(name)}")
        except md.PackageNotFoundError:
            print(f"{name} missing")
    return 0
