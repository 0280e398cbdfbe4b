"""``flexispeech stream`` / ``serve`` options: numbers argparse must refuse (nan and inf got
past ``> 0`` checks into tracebacks), and a server that cannot listen, named in one line."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from flexispeech.cli import build_parser, main

HOST = "127.0.0.1"  # loopback only


@pytest.mark.parametrize(
    ("argv", "option"),
    [
        (["stream", "a.wav", "--chunk", "nan"], "--chunk"),
        (["stream", "a.wav", "--chunk", "inf"], "--chunk"),
        (["stream", "a.wav", "--chunk", "0"], "--chunk"),
        (["serve", "--max-upload-mb", "inf"], "--max-upload-mb"),
        (["serve", "--idle-timeout", "nan"], "--idle-timeout"),
        (["serve", "--max-pending", "-1"], "--max-pending"),
        (["serve", "--port", "99999"], "--port"),
        (["serve", "--port", "-5"], "--port"),
    ],
)
def test_numbers_out_of_range_are_refused_by_argparse(capsys, argv: list[str], option: str) -> None:
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(argv)
    assert exit_.value.code == 2
    assert f"error: argument {option}: expected a" in capsys.readouterr().err


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port another server listens on."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_a_port_in_use_fails_before_the_model_loads(
    taken_port: int, monkeypatch: pytest.MonkeyPatch, error_line
) -> None:
    import flexispeech.commands.stream as stream

    def no_model(*_: object, **__: object) -> None:
        raise AssertionError("the model was loaded before the port was checked")

    monkeypatch.setattr(stream, "load_online", no_model)
    assert main(["serve", "--host", HOST, "--port", str(taken_port), "--model", "random:tiny"]) == 2
    error_line("serve", f"cannot listen on {HOST}:{taken_port}", "in use")


def test_a_host_that_does_not_resolve_is_one_line(error_line) -> None:
    assert main(["serve", "--host", "no.such.host.invalid", "--model", "random:tiny"]) == 2
    error_line("serve", "cannot listen on no.such.host.invalid:8000")
