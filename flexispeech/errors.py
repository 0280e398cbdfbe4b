"""User-facing errors: the CLI prints them as one line (no traceback unless --debug)."""

from __future__ import annotations


class FlexispeechError(Exception):
    """An error caused by the user's input (a file, a key, a value), not by a bug.

    The message must name the offending file or key and say what is wrong with it.
    """


class AudioError(FlexispeechError):
    """An audio file that cannot be used: missing, unreadable, empty or not finite."""

    def __init__(self, path: object, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


class ConfigError(FlexispeechError):
    """A configuration (YAML file, key=value override, adapter config) that is invalid."""
