"""The command line documents itself: every flag has help, every default is shown."""

from __future__ import annotations

import argparse

import pytest

from edgezoo.cli import build_parser, main


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


def _informative_default(action: argparse.Action) -> bool:
    return (
        action.option_strings != []
        and action.default not in (None, argparse.SUPPRESS)
        and (not isinstance(action.default, bool))
    )


def test_every_argument_of_every_subcommand_has_help():
    missing = [
        f"{name} {action.option_strings or action.dest}"
        for name, sp in _subparsers().items()
        for action in sp._actions
        if not isinstance(action, argparse._HelpAction) and not (action.help or "").strip()
    ]
    assert missing == []


@pytest.mark.parametrize("name", sorted(_subparsers()))
def test_help_shows_every_default(name, capsys):
    sp = _subparsers()[name]
    formatter = sp._get_formatter()
    for action in sp._actions:
        if _informative_default(action):
            text = formatter._expand_help(action)
            assert "default" in text, f"{name} {action.option_strings}: {text!r}"
    with pytest.raises(SystemExit):
        main([name, "--help"])
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps lines anywhere
    if any(_informative_default(a) for a in sp._actions):
        assert "(default: " in out or "(default " in out
