"""A bad command-line argument gets one line on stderr and a non-zero exit."""

from __future__ import annotations

import pytest

from vigil.cli import main


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["no-such-command"], "No such command"),
        (["stack", "status", "--only", "kafka,zookeeper"], "unknown service(s) zookeeper"),
        (["stack", "status", "--bogus"], "No such option"),
        (["replay", "data", "--speed", "fast"], "--speed must be a positive number or 'max'"),
        (["replay", "data", "--speed", "0"], "--speed must be a positive number or 'max'"),
        (["replay", "data", "--format", "hl8"], "unsupported --format 'hl8'"),
        (["replay", "/no/such/path"], "no such file or folder: /no/such/path"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("vigil: error: ")
    assert message in err
    assert err.count("\n") == 1


def test_bad_setting_from_the_environment_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("VIGIL_STACK_KAFKA_PORT", "not-a-port")
    assert main(["stack", "status"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vigil: error: invalid setting kafka_port")
    assert err.count("\n") == 1
