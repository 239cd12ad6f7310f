"""argparse value types with a range, shared by the stages' command lines.

A bad value stops at parsing with argparse's one-line usage error, before any model or
data is loaded: ``--steps 0``, ``--port 70000`` and ``--timeout -1`` never start work.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable


def at_least(low: int) -> Callable[[str], int]:
    """A whole number >= ``low``."""

    def parse(text: str) -> int:
        value = integer(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"{value} is not allowed: use {low} or more")
        return value

    return parse


def integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None


def port(text: str) -> int:
    value = integer(text)
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a TCP port: use 1-65535")
    return value


def positive(text: str) -> float:
    """A finite number > 0 (NaN and inf refused)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text} is not allowed: use a number > 0")
    return value


def fraction(text: str) -> float:
    """A number in [0, 1] (a weight or a share)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{text} is not allowed: use a number in [0, 1]")
    return value


def choices_list(choices: tuple[str, ...]) -> Callable[[str], list[str]]:
    """Comma-separated values, each one of ``choices``: ``--to int8,int4`` (use with
    ``action="extend"`` so the flag may also be repeated)."""

    def parse(text: str) -> list[str]:
        values = [v.strip() for v in text.split(",") if v.strip()]
        bad = [v for v in values if v not in choices]
        if bad or not values:
            raise argparse.ArgumentTypeError(
                f"{', '.join(bad) or repr(text)}: choose from {', '.join(choices)} "
                "(comma-separated, or repeat the flag)"
            )
        return values

    return parse
