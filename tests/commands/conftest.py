"""Shared checks of the command-line tests."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest

BAR = re.compile(r"^[\w ]+: +\d+%\|")  # a tqdm progress line a command left on stderr before failing


@pytest.fixture
def error_line(capsys: pytest.CaptureFixture) -> Callable[..., str]:
    """``error_line(command, *needles)``: the one ``flexispeech COMMAND: error: ...`` line on
    stderr (progress bars aside, no traceback); asserts it names every needle."""

    def check(command: str, *needles: str) -> str:
        err = capsys.readouterr().err
        assert "Traceback" not in err
        lines = [line for line in err.splitlines() if line.strip() and not BAR.match(line)]
        assert len(lines) == 1 and lines[0].startswith(f"flexispeech {command}: error: "), err
        for needle in needles:
            assert needle in lines[0], (needle, lines[0])
        return lines[0]

    return check
