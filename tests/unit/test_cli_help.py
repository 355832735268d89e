"""Every subcommand's --help says what it does, shows an example and its options' defaults."""

from __future__ import annotations

import argparse

import pytest

from iap import cli


def _subcommands(
    parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()
) -> list[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    found = [(prefix, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                found += _subcommands(child, (*prefix, name))
    return found


COMMANDS = _subcommands(cli._parser())


def test_every_command_is_covered() -> None:
    names = {" ".join(path) for path, _ in COMMANDS}
    assert {
        "run",
        "dev",
        "check",
        "certs dev",
        "keys new",
        "mesh render",
        "policy explain",
    } <= names


@pytest.mark.parametrize(
    ("path", "parser"), COMMANDS, ids=[" ".join(path) or "iap" for path, _ in COMMANDS]
)
def test_help_has_a_description_an_example_and_the_defaults(
    path: tuple[str, ...], parser: argparse.ArgumentParser
) -> None:
    text = parser.format_help()
    assert parser.description, path
    assert " ".join(parser.description.split()) in " ".join(text.split())
    assert "\nExample:\n  iap " in text, text
    for action in parser._actions:
        default = action.default
        if action.option_strings and default not in (None, False, "", argparse.SUPPRESS):
            assert f"(default: {default})" in " ".join(text.split()), (path, action.dest)


def test_dev_help_names_its_ports_and_otlp(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["dev", "--help"])
    assert exited.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--port PORT the public port (default: 8080)" in text
    assert "--admin-port ADMIN_PORT the admin listener's port (default: 9090)" in text
    assert "--otlp URL send spans to this OTLP/HTTP endpoint" in text
    assert "Example: iap dev --port 8080 --otlp http://127.0.0.1:4318" in text
